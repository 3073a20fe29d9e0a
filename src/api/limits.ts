// Limits of the control API, named with their units. They live here rather
// than in src/constants.ts because only src/api uses them; apiBodyBytesMax,
// which the daemon's docs also cite, stays in src/constants.ts.

/** The server drops a connection whose request headers take longer than this. */
export const apiHeadersTimeoutMs = 10_000;
/** The server drops a connection whose whole request (headers and body) takes longer than this. */
export const apiRequestTimeoutMs = 30_000;
/** How often Node checks the two timeouts above (its default, 30 s, would let a slow client overstay). */
export const apiConnectionsCheckMs = 1_000;
/** An idle keep-alive connection is closed by the server after this. */
export const apiKeepAliveTimeoutMs = 5_000;
/** Requests served on one keep-alive connection before the server closes it. */
export const apiRequestsPerSocketMax = 1000;
/** close() waits this long for in-flight requests before cutting their sockets. */
export const apiCloseGraceMs = 2_000;
/** Largest response the client reads (a volume list, /metrics). */
export const apiResponseBytesMax = 16 * 1024 * 1024;
/** Default time the client waits for a whole answer. */
export const apiClientTimeoutMs = 15_000;
/** `pxd scrub` waits for the scrub itself (a pass over 1 TiB at 32 MiB/s takes 9 hours). */
export const apiScrubTimeoutMs = 24 * 3600 * 1000;
/** Longest volume name (the name regex below allows 63 characters). */
export const volumeNameCharsMax = 63;
