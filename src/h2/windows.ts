/**
 * Receive windows the proxy gives its HTTP/2 peers (clients and h2c upstreams). RFC 9113's
 * default, 65,535 bytes, lets a sender put one 64 KiB window in flight and then wait for a
 * WINDOW_UPDATE, which the proxy sends only when its event loop reaches the stream: on a busy
 * machine a body then moves 64 KiB per event-loop turn. A stream window of 1 MiB keeps bodies
 * moving between turns; a paused stream (its destination is slow) holds at most its window, as
 * Node stops returning stream window while the stream is not read. The connection window covers
 * 16 streams moving at once (Node returns connection window as soon as data arrives).
 */
export const H2_STREAM_WINDOW = 1024 * 1024;
export const H2_CONNECTION_WINDOW = 16 * 1024 * 1024;
