// The Airlock version, reported by the CLI, the API and the banner.
export const VERSION = '0.1.0';
