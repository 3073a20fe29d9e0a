// Every limit in pxd, named with its unit. Sections are owned by layers;
// checkConstants() runs at start and asserts that the limits agree.

import { assert } from "./base/assert.js";

// ---- store (src/store) ----
export const sectorBytes = 512;
/**
 * Volume data is checksummed per block of this size (CRC32C, kept in the block
 * map): every read checks the blocks it touches. 4 KiB is the block size of
 * the filesystems on top and what NBD clients are told to prefer, so a 4 KiB
 * read checks exactly what it reads, with one pass over its bytes.
 */
export const checksumBlockBytes = 4096;
export const segmentBytes = 64 * 1024 * 1024;
/** Header bytes of the records this code writes (version 2; version 1 records had 64). */
export const recordHeaderBytes = 72;
/** Largest payload one record carries; larger writes are split. */
export const recordPayloadBytesMax = 4 * 1024 * 1024;
/** Records in one group commit (one writev + one fdatasync). */
export const commitRecordsMax = 4096;
/**
 * Commits in flight at once: one pwritev at a time, fdatasyncs overlapping.
 * Measured on this machine's disk: 1, 2 and 4 concurrent fdatasync writers
 * completed 617, 2619 and 7919 synced writes/s (fio), so overlap pays.
 * Written into every record header; recovery reads it from there.
 */
export const commitsInFlightMax = 3;
/** Bytes in one group commit. */
export const commitBytesMax = 32 * 1024 * 1024;
/** A checkpoint is written after this many bytes of log. */
export const checkpointLogBytes = 256 * 1024 * 1024;
/** Segments whose live ratio is below this are compacted by GC. */
export const gcLiveRatioMax = 0.5;
/**
 * GC moves live data only while the sealed segments take more than this many
 * times the live data; a segment with no live data left is freed whenever a
 * checkpoint allows. Under a steady overwrite, a half-dead segment is soon a
 * dead one: moving its live half early is work thrown away (with the live
 * ratio alone as the rule, the 1 MiB sequential write bench moves 0.96 GB
 * for 6.2 GB written).
 */
export const gcSpaceAmpMax = 1.5;
/**
 * Freed segment files kept for reuse instead of being unlinked: a checkpoint's
 * worth (GC frees segments after each checkpoint), so a steady overwrite reuses
 * written files instead of zero-filling new ones. 1 MiB sequential overwrite
 * measured 0.86-0.90 GB/s with 2, 1.00-1.05 with 4, 0.98-1.02 with 8.
 */
export const freeSegmentsMax = 4;
/** Volume size limit. */
export const volumeBytesMax = 64 * 1024 ** 4;

// ---- nbd (src/nbd) ----
/** Open NBD connections per daemon; one more is closed right after accept, unless an idle one can be closed instead (nbdIdleTimeoutMs). */
export const nbdConnectionsMax = 256;
/** From accept until the client enters transmission; then the connection is closed. */
export const nbdHandshakeTimeoutMs = 10_000;
/** Options one client may send before it must enter transmission. */
export const nbdHandshakeOptionsMax = 256;
/** Largest option data we read into memory (name 4096 + queries); larger gets NBD_REP_ERR_TOO_BIG. */
export const nbdOptionBytesMax = 64 * 1024;
/** An oversized option up to this length is read and discarded; a longer one closes the connection. */
export const nbdOptionDiscardBytesMax = 1024 * 1024;
/** NBD strings (export names, queries, messages): the spec's hard limit ("Conventions"). */
export const nbdStringBytesMax = 4096;
/** Metadata context queries in one LIST/SET_META_CONTEXT option. */
export const nbdMetaQueriesMax = 16;
/** Maximum payload advertised in NBD_INFO_BLOCK_SIZE: largest READ or WRITE (2^25, the spec's default). */
export const nbdPayloadBytesMax = 32 * 1024 * 1024;
/** An oversized WRITE payload up to this length is discarded to stay in sync; longer closes the connection. */
export const nbdWriteDiscardBytesMax = 64 * 1024 * 1024;
/** Requests one connection may have in flight; past it the server stops reading that socket. */
export const nbdRequestsInFlightMax = 128;
/**
 * Bytes one connection may hold: write payloads received (or announced) and
 * not yet answered, READ lengths from admission until answered, and reply
 * bytes not yet taken by the kernel. A request that would reach it waits, and
 * the socket is not read meanwhile. At 128 MiB two clients that never read
 * would take the whole node budget; at 64 MiB one takes at most a third of
 * what is shared above the floors, and still holds 63 requests of 1 MiB or
 * one of the largest payload.
 */
export const nbdConnectionBytesInFlightMax = 64 * 1024 * 1024;
/**
 * Bytes every connection may hold whatever the node holds: a client holding
 * little never waits on the node budget, so a fresh client gets its small
 * requests served while others hog memory. 256 KiB holds 4 KiB reads at
 * queue depth 32 with their reply reservations (32 x 5 KiB). Every
 * connection's floor together (256 x 256 KiB = 64 MiB) is set aside from
 * nbdNodeBytesInFlightMax.
 */
export const nbdConnectionBytesInFlightFloor = 256 * 1024;
/**
 * Bytes all NBD connections of the node may hold together (the same bytes as
 * nbdConnectionBytesInFlightMax counts). A request above its connection's
 * floor waits while it does not fit under this bound minus every
 * connection's floor; waiting connections are not read and are let go, the
 * one holding least first, as bytes drain. Without it 24 clients that never
 * read their replies held 3135 MiB of RSS; with 256 MiB the daemon stays at
 * 229 MiB (node dist/bench/hostile-clients.js memory).
 */
export const nbdNodeBytesInFlightMax = 256 * 1024 * 1024;
/**
 * Bytes a request holds besides its data until it is answered: its reply
 * header, Node's cost for each queued reply buffer (two for a READ), and an
 * error message of a few hundred bytes. Longer error messages are counted
 * once queued.
 */
export const nbdReplyBytesReserved = 1024;
/**
 * What Node holds for one queued reply buffer beyond its bytes (Buffer and
 * write-queue entry): 243 to 245 B of RSS per 16-byte reply measured on Node 20
 * (node dist/bench/hostile-clients.js buffers). Counted with every queued
 * buffer, so a client that sends small requests and never reads the replies
 * is bounded in real memory, not only in payload bytes.
 */
export const nbdQueuedBufferOverheadBytes = 256;
/**
 * A connection in transmission with no request in flight and none received
 * for this long is idle. An idle connection is closed only when a new client
 * needs its slot (nbdConnectionsMax or nbdConnectionsPerAddressMax reached),
 * the longest idle first: a kernel client or qemu over an idle filesystem
 * sends nothing for hours and must not lose its device for it, but a crowd of
 * idle connections must not lock others out. A minute is longer than any
 * pause inside a working client's I/O.
 */
export const nbdIdleTimeoutMs = 60_000;
/**
 * Connections from one client IP address (Unix-socket clients are exempt:
 * reaching the socket needs access to the data directory). One over it is
 * closed right after accept, unless an idle connection from that address can
 * be closed instead. A quarter of nbdConnectionsMax: one host cannot take
 * more, and 64 is 16 devices with 4 connections each.
 */
export const nbdConnectionsPerAddressMax = 64;
/** Extents in one NBD_REPLY_TYPE_BLOCK_STATUS chunk (the spec says at most 2^20). */
export const nbdBlockStatusExtentsMax = 64 * 1024;
/** After shutdown() starts, connections still open after this are destroyed. */
export const nbdShutdownGraceMs = 10_000;

// ---- QoS and rebuild limits (src/daemon/qos.ts, src/replication/snapshot.ts) ----
/** The most IOPS a volume's limit may name (pxd volume create/update --max-iops). */
export const qosIopsMax = 10_000_000;
/** The most bytes a second a volume's limit may name (--max-bandwidth): 1 TiB/s. */
export const qosBandwidthBytesMax = 1024 ** 4;
/** The least bytes a second a volume's bandwidth limit may name: one 4 KiB block a second. */
export const qosBandwidthBytesMin = 4096;
/** Seconds of a volume's limits its token buckets hold (--burst-seconds): what an idle volume may then spend at once. */
export const qosBurstSecDefault = 1;
export const qosBurstSecMax = 3600;
/** The longest a volume's throttle sleeps before it looks at its limits again (a limit raised or removed frees its queue within this). */
export const qosLimitRecheckMs = 1000;
/**
 * Requests every NBD connection of a node may have waiting, for a volume's
 * limit or for the node's fair share: what the NBD layer lets in at most, so
 * the queues need no bound of their own (asserted where they grow).
 */
export const qosQueuedRequestsMax = nbdConnectionsMax * nbdRequestsInFlightMax;
/**
 * Volume requests a node runs at once, from every NBD connection; the rest
 * wait in one queue per volume, taken in deficit round-robin (fair in bytes)
 * so one volume's deep queue never holds another volume's request behind it
 * for more than one turn. Above what one client at QD32 (fio, the kernel's
 * default of 128 is split over a few volumes) keeps busy.
 */
export const ioNodeRequestsInFlightMax = 64;
/** Bytes a volume's queue is credited per round of the node's fair share. */
export const ioFairQuantumBytes = 128 * 1024;
/** What a request costs in the fair share beyond its data: the fixed cost of a 4 KiB write, so small requests are not free. */
export const ioFairRequestCostBytes = 4096;
/**
 * Bytes a second every volume copy this node sends (a new replica's full
 * copy, a returning replica's delta) takes together, unless `pxd daemon
 * --resync-bandwidth` says otherwise. The rate measured to leave client 4 KiB
 * QD32 writes 70% of their rate during a rebuild where both nodes share one
 * disk and two cores (docs/bench.md, "QoS and rebuild limits"; 64 MiB/s left
 * them 40%); 1 GiB takes 32 s, 1 TiB 9 hours: raise it where nodes have
 * their own disks.
 */
export const resyncBandwidthBytesPerSecDefault = 32 * 1024 * 1024;
/** Seconds of the rebuild bandwidth its bucket holds: what timers firing late on a busy event loop may make up. */
export const resyncBurstSec = 0.1;

// ---- raft (src/raft) ----
/** A follower campaigns after a randomized timeout in [electionTicks, 2 * electionTicks). */
export const raftElectionTicks = 10;
/** A leader sends heartbeats every this many ticks; must be well below raftElectionTicks. */
export const raftHeartbeatTicks = 1;
/** Entry bytes in one AppendEntries message (at least one entry is always sent). */
export const raftAppendBytesMax = 1024 * 1024;
/** AppendEntries messages in flight to one follower in replicate state. */
export const raftInflightMsgsMax = 256;
/** Entry bytes in flight to one follower (0 = no byte limit beyond the message count). */
export const raftInflightBytesMax = 64 * 1024 * 1024;
/** Bytes of proposed but uncommitted entries a leader accepts before it drops proposals. */
export const raftUncommittedBytesMax = 256 * 1024 * 1024;
/** ReadIndex requests a leader holds while it waits for a quorum or its first commit. */
export const raftReadIndexPendingMax = 4096;
/** Committed entry bytes handed to the application in one Ready. */
export const raftCommittedBytesMax = 64 * 1024 * 1024;

// ---- nbd client (src/nbd/client.ts) and backup (src/backup) ----
/** Requests one NBD client connection keeps in flight; more wait for a slot. */
export const nbdClientRequestsInFlightMax = 16;
/** Largest option reply a client reads in the handshake (export info, meta contexts, error strings); a longer one closes the connection. */
export const nbdClientOptionReplyBytesMax = 64 * 1024;
/** Option replies to one option (NBD_REP_INFO, NBD_REP_META_CONTEXT, ...) before the final one; more is a broken server. */
export const nbdClientOptionRepliesMax = 64;
/** Largest READ or WRITE one client request carries, whatever larger the server allows (its NBD_INFO_BLOCK_SIZE maximum may be lower). */
export const nbdClientPayloadBytesMax = 32 * 1024 * 1024;
/** Block status descriptors the client takes in one reply chunk. */
export const nbdClientExtentsMax = 64 * 1024;
/** No byte from the server for this long while a request waits: the connection is dropped and the requests fail. */
export const nbdClientReplyTimeoutMs = 60_000;
/**
 * Bytes a backup chunk covers. 4 MiB: large enough that a 1 TiB volume is a
 * 256 Ki-entry manifest (about 17 MiB of JSON) and the per-object cost of S3
 * (a PUT, a HEAD) stays small; small enough that a changed 4 KiB block costs
 * at most one 4 MiB upload, and that chunks in flight fit a few tens of MiB.
 */
export const backupChunkBytes = 4 * 1024 * 1024;
/** The chunk sizes a manifest may name (read from a target, so untrusted). */
export const backupChunkBytesMin = 64 * 1024;
export const backupChunkBytesMax = 64 * 1024 * 1024;
/** Chunks read, compressed and uploaded (or fetched, checked and written) at once by one backup or restore. */
export const backupChunksInFlight = 4;
/**
 * Largest manifest read from a target (JSON.parse needs it whole, as one
 * string). A volume above about 16 TiB gets larger chunks so its manifest
 * fits (chunkBytesFor in src/backup/manifest.ts).
 */
export const backupManifestBytesMax = 256 * 1024 * 1024;
/** Bytes one chunk's entry takes in a manifest at most: a quoted 64-digit hash, a comma, a newline, an indent. */
export const backupManifestEntryBytes = 70;
/** Chunk bytes one backup or restore holds at once (read, compressed, fetched): chunks in flight are cut to fit it when chunks are larger than backupChunkBytes. */
export const backupBytesInFlightMax = 32 * 1024 * 1024;
/** Largest stored chunk read from a target: brotli's worst case adds a few bytes per 64 KiB of input. */
export const backupStoredChunkBytesMax = backupChunkBytesMax + backupChunkBytesMax / 1024 + 1024;
/** NBD connections one backup or restore uses when a connection fails (a node died): the work starts over on another node each time. */
export const backupConnectionAttempts = 3;
/** Manifests one list, verify or delete reads. */
export const backupManifestsMax = 100_000;

// ---- daemon / api ----
export const defaultNbdPort = 10809;
export const defaultApiPort = 9001;
export const defaultPeerPort = 9002;
/**
 * Read buffers from this size up to readPoolBufferBytesMax are recycled;
 * smaller ones come from Node's own pool, which takes only requests under
 * 4 KiB. 4 KiB ones are recycled too: a fresh ArrayBuffer per 4 KiB read
 * costs a daemon under 4k random reads about as much CPU as checking each
 * read's checksum (docs/bench.md, "Block checksums").
 */
export const readPoolBufferBytesMin = 4 * 1024;
export const readPoolBufferBytesMax = 32 * 1024 * 1024;
/** Bytes of idle read buffers kept for reuse. */
export const readPoolBytesMax = 64 * 1024 * 1024;
/**
 * A read of at least this many bytes, of whole blocks into a pooled buffer,
 * has its checksums checked on the daemon's checksum thread
 * (src/os/crc-verifier.ts) while the event loop serves other requests; its
 * pooled buffer is a SharedArrayBuffer. Smaller reads are checked inline:
 * for them the hand-off would cost more than the checksum (about 1 µs per
 * 4 KiB). How much it gives: docs/bench.md, "Repl 1 reads".
 */
export const verifyOffThreadBytesMin = 256 * 1024;
/**
 * Largest JSON body the control API accepts. The largest legitimate body is a
 * join request: with every string at its longest and every character one
 * JSON writes as \uXXXX, 14,840 bytes (test/unit/api-server.test.ts); a
 * volume create is at most 2.3 KiB. 64 KiB leaves room.
 */
export const apiBodyBytesMax = 64 * 1024;
/**
 * Nesting of arrays and objects in a control API body, counted in one pass
 * over the bytes before JSON.parse sees them. Legitimate bodies nest 2 deep
 * (a join request's labels). JSON.parse took 136 to 258 ms for a 1 MiB body
 * of nested brackets and 5 to 10 ms for 64 KiB, on the event loop every NBD
 * client shares; the scan takes microseconds (node
 * dist/bench/hostile-clients.js parse).
 */
export const apiBodyDepthMax = 32;
/** Directory levels under the data dir that start-up makes private (it holds two: node/ and store/). */
export const privateTreeDepthMax = 8;
/** Characters of one client-supplied string (a name, an address, a path) shown in a log line. */
export const logFieldCharsMax = 256;
/** Characters of one log line; the rest is cut with a note. */
export const logLineCharsMax = 16 * 1024;
/**
 * A node is degraded while its data dir's filesystem has less free than the
 * larger of these: room for the next log segment and its preallocated spare,
 * and the share at which filesystems themselves start to slow down.
 */
export const diskFreeBytesMin = 2 * segmentBytes;
export const diskFreePercentMin = 5;

// ---- replication (src/replication) ----
/** Body bytes of one peer frame once authenticated: a 32 MiB volume write plus Raft framing, with room. */
export const peerFrameBytesMax = 64 * 1024 * 1024;
/** Body bytes of one peer frame before authentication (hello, proof, refusal): no large buffer for strangers. */
export const peerHandshakeFrameBytesMax = 256;
/** From connect (or accept) until both sides are authenticated; then the connection is closed and logged. */
export const peerHandshakeTimeoutMs = 5_000;
/** Unauthenticated inbound connections at once; one more is closed right after accept. */
export const peerHandshakesMax = 64;
/** Shortest cluster secret accepted: HMAC-SHA256 keys below 128 bits invite offline guessing. */
export const peerSecretBytesMin = 16;
/** UTF-8 bytes of a cluster id (it travels in the hello, length as one byte). */
export const peerClusterIdBytesMax = 64;
/** Encoded bytes queued for one peer and not yet handed to its socket; past it send() returns false. */
export const peerQueueBytesMax = 128 * 1024 * 1024;
/** Frames queued for one peer (bounds per-frame overhead of many tiny messages). */
export const peerQueueFramesMax = 65_536;
/** Bytes handed to one socket but not yet taken by the kernel; above it frames stay in the peer queue. */
export const peerSocketBytesHighWater = 4 * 1024 * 1024;
/** First reconnect delay after a lost or failed connection; doubles per failure (with jitter). */
export const peerReconnectDelayMsMin = 50;
/** Cap of the reconnect backoff. */
export const peerReconnectDelayMsMax = 2_000;
/** A ping goes out on a connection that sent nothing for this long (keeps the idle check honest). */
export const peerKeepaliveMs = 1_000;
/** A connection that received nothing for this long is dead (half-open after a partition) and is closed. */
export const peerIdleTimeoutMs = 10_000;
/**
 * Heartbeats and heartbeat responses in one coalesced envelope to a peer
 * (docs/formats/peer-protocol.md, "Coalesced heartbeats"): a sender with more
 * starts another envelope; a receiver drops a longer one before reading it.
 */
export const peerBeatsMax = 4096;
/** Bytes of the ReadIndex context a heartbeat item may carry (the driver's are 8). */
export const peerBeatContextBytesMax = 64;

/** The replication limits agree with each other and with the layers they carry (called at start and by tests). */
/** Volume data in one snapshot chunk (a full copy for a replica behind the compaction point). */
export const snapshotChunkBytes = 1024 * 1024;
/** Extents in one snapshot chunk: each is at least a sector, so a full chunk never needs more. */
export const snapshotChunkExtentsMax = snapshotChunkBytes / sectorBytes;
/** Snapshot chunks a leader has sent to one follower and not yet seen acknowledged. */
export const snapshotWindowChunks = 4;
/**
 * Volume bytes one chunk of a delta snapshot may list as unchanged (`keep`):
 * the follower reads them from its own copy and writes them into the staging
 * group, so this bounds the memory a chunk costs it.
 */
export const snapshotChunkKeepBytes = 8 * 1024 * 1024;
/**
 * Raft log a leader keeps for a replica that is down, past what every live
 * replica has: while the missed log is below this, the replica catches up
 * from the log (only what it missed); beyond it the log is compacted and the
 * replica gets a full copy when it returns. `pxd daemon --log-retain`.
 */
export const raftLogRetainBytes = 256 * 1024 * 1024;

/** Bytes the scrub reads and checks in one step on the event loop (about half a millisecond of CRC32C at 4 GB/s). */
export const scrubStepBytes = 1024 * 1024;
/** The scrub's average read rate unless `pxd daemon --scrub-bandwidth` says otherwise. */
export const scrubBandwidthBytesPerSecDefault = 32 * 1024 * 1024;
/**
 * A node scrubs everything it holds this long after its last full pass
 * (`pxd daemon --scrub-interval`; 0 turns the schedule off). Weekly, as
 * Ceph's deep scrub: at the default rate a pass over 1 TiB takes 9 hours.
 */
export const scrubIntervalMsDefault = 7 * 24 * 3600 * 1000;

/** Bytes of damaged blocks one repair request asks a replica for (src/replication/repair.ts). */
export const repairFetchBytesMax = 1024 * 1024;
/**
 * Rounds over the other replicas a repair makes before it gives up on a
 * block: a replica behind or ahead on a write to it holds other bytes, and
 * catches up within a round or two.
 */
export const repairRoundsMax = 5;
export const repairRoundDelayMs = 200;
/** How long a repair waits for one replica's answer before it asks the next. */
export const repairAnswerTimeoutMs = 2_000;

export function checkReplicationConstants(): void {
  assert(scrubStepBytes % checksumBlockBytes === 0, "a scrub step is whole blocks");
  assert(repairFetchBytesMax % checksumBlockBytes === 0 && repairFetchBytesMax + 1024 <= peerFrameBytesMax, "a repair answer is whole blocks and fits one frame");
  assert(peerFrameBytesMax >= snapshotChunkBytes + 2 * snapshotChunkExtentsMax * 2 * 9 + 1024, "a full snapshot chunk (data and kept extents) fits one frame");
  assert(snapshotChunkKeepBytes % sectorBytes === 0 && snapshotChunkKeepBytes >= snapshotChunkBytes, "kept extents are whole sectors");
  assert(snapshotChunkBytes % sectorBytes === 0 && snapshotWindowChunks >= 1, "snapshot chunks hold whole sectors");
  assert(peerFrameBytesMax <= 0xffffffff, "a frame length fits the u32 length field");
  assert(peerFrameBytesMax >= nbdPayloadBytesMax + 1024 * 1024, "the largest volume write fits one frame with Raft framing");
  assert(peerFrameBytesMax >= raftAppendBytesMax + 1024 * 1024, "the largest AppendEntries batch fits one frame");
  assert(peerHandshakeFrameBytesMax >= 48 + peerClusterIdBytesMax, "a hello with the longest cluster id fits a handshake frame");
  assert(peerHandshakeFrameBytesMax < peerFrameBytesMax, "strangers get the small bound");
  assert(peerQueueBytesMax >= peerFrameBytesMax + 5, "one largest frame fits a peer queue");
  assert(peerQueueFramesMax >= raftInflightMsgsMax, "a full Raft inflight window fits a peer queue");
  assert(peerReconnectDelayMsMin > 0 && peerReconnectDelayMsMin <= peerReconnectDelayMsMax, "backoff range is ordered");
  assert(peerIdleTimeoutMs >= 3 * peerKeepaliveMs, "an idle peer misses several pings before it is called dead");
  assert(peerHandshakeTimeoutMs <= peerIdleTimeoutMs, "a handshake never outlives the idle bound");
  // An item is a 5-element msgpack array: 1 byte, four numbers of at most 9, a bin header of 2, the context.
  assert(peerBeatsMax >= 1 && peerBeatsMax * (1 + 4 * 9 + 2 + peerBeatContextBytesMax) + 64 <= peerFrameBytesMax, "a full beats envelope fits one frame");
}

// ---- cluster (src/cluster) ----
/** Voters of the meta group, the Raft group whose state machine is the catalog. */
export const metaVotersMax = 5;
/** Nodes the catalog holds; addNode past it is refused. */
export const catalogNodesMax = 1024;
/** Volumes the catalog holds; createVolume past it is refused. */
export const catalogVolumesMax = 65_536;
/** Replicas of one volume: the voters of its Raft group. */
export const volumeReplicasMax = 5;
/** Snapshots of one volume at once (pxd snapshot create past it is refused). */
export const volumeSnapshotsMax = 64;
/** Snapshots in the whole catalog; a snapshot past it is refused. */
export const catalogSnapshotsMax = 4096;
/** Shortest interval of a volume's snapshot schedule (pxd snapshot schedule --every). */
export const snapshotEveryMsMin = 60 * 1000;
/** Longest interval of a snapshot schedule: a year. */
export const snapshotEveryMsMax = 366 * 24 * 3600 * 1000;
/** The largest snapshot id: ids are never reused within a volume, and a snapshot's store group id (src/store/store.ts) holds it in 20 bits. */
export const snapshotIdMax = 2 ** 20 - 1;
/** Hosts attached to one volume at once (pxd volume attach; more than one only for a --shared volume or read-only). */
export const volumeAttachmentsMax = 16;
/** Attachments in the whole catalog; an attach past it is refused. */
export const catalogAttachmentsMax = 4096;
/** Characters of a volume or node name (^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$, as the control API checks). */
export const catalogNameCharsMax = 63;
/** Characters of a node address (a host name or an IP literal; DNS names are at most 253). */
export const nodeAddressCharsMax = 253;
/** Labels (zone, rack, ...) on one node. */
export const nodeLabelsMax = 16;
/** Characters of one label key or value. */
export const nodeLabelCharsMax = 63;
/** Capacity, free or used bytes one node may report (4 PiB; keeps sums of a few nodes exact in a double). */
export const nodeBytesMax = 2 ** 52;
/** Bytes of one encoded catalog command: version byte and msgpack body. Checked before decoding. */
export const catalogCommandBytesMax = 64 * 1024;
/**
 * Bytes of one encoded catalog snapshot (a full catalog is about 62 MiB; the
 * check below). Checked before decoding. It travels to a member behind in one
 * Raft message, so it fits a peer frame.
 */
export const catalogSnapshotBytesMax = 62 * 1024 * 1024;

/** Bytes an encrypted volume's `encryption` record adds to a catalog snapshot at most (its keys, the cipher name, 186 hex digits of wrapped key). */
export const catalogVolumeEncryptionBytesMax = 256;
/** Bytes a clone's `source` record adds to a catalog snapshot at most (its keys, two ids, up to volumeReplicasMax seed ids). */
export const catalogCloneSourceBytesMax = 128;
/** Meta-group entries applied between two catalog snapshots; each node compacts the meta log behind its latest one. */
export const catalogSnapshotEntries = 1024;
/** Meta-group entries kept behind the latest catalog snapshot, so a member a little behind catches up from the log, not a snapshot. */
export const catalogLogTailEntries = 256;
/** Names listed in one error message before it says "and N more". */
export const catalogErrorNamesMax = 5;
/** Refused catalog entries the catalog remembers (the latest), so every node shows the same in pxd status. */
export const catalogRefusalsMax = 16;
/** Characters of a remembered refusal's sentence. */
export const catalogRefusalCharsMax = 1024;
/** Latest time (ms since the epoch) a command may carry: the largest a JavaScript Date holds (ECMA-262 "Time Values"). */
export const catalogTimeMsMax = 8.64e15;
/**
 * Revoked API tokens the catalog remembers at once. An entry is dropped once
 * its token has expired, so the list holds at most the revocations of one
 * longest token lifetime (apiTokenTtlMsMax); a revoke past it is refused.
 */
export const catalogRevokedTokensMax = 4096;
/** Characters of an API token's id: 16 hex digits (8 random bytes). */
export const apiTokenIdChars = 16;
/** Longest lifetime of an API token (a year and a day); what a revocation is kept for when the token's expiry is not known. */
export const apiTokenTtlMsMax = 366 * 24 * 3600 * 1000;
/** Bytes of a node's audit log file before it is rotated to audit.log.1 (the one older file kept): at most twice this on disk. */
export const auditFileBytesMax = 8 * 1024 * 1024;
/** Audit records one node returns to one read (the newest; --since narrows): about 300 bytes each. */
export const auditRecordsReadMax = 2000;

/** The cluster limits agree with each other and with the layers they carry (called at start and by tests). */
export function checkClusterConstants(): void {
  assert(metaVotersMax >= 1 && metaVotersMax % 2 === 1, "the meta group has an odd number of voters");
  assert(volumeReplicasMax >= 1 && volumeReplicasMax <= catalogNodesMax, "a full replica set fits the node limit");
  assert(catalogCommandBytesMax >= 1 + nodeLabelsMax * 2 * (nodeLabelCharsMax * 4 + 8) + 4 * 1024, "the largest addNode fits a command");
  assert(catalogCommandBytesMax <= raftAppendBytesMax, "a command fits one AppendEntries batch");
  assert(
    catalogSnapshotBytesMax >=
      catalogNodesMax * 4 * 1024 + catalogVolumesMax * (catalogNameCharsMax * 4 + 64 + 64 + 32 + volumeReplicasMax * 9 + catalogVolumeEncryptionBytesMax + catalogCloneSourceBytesMax) + catalogAttachmentsMax * (3 * catalogNameCharsMax * 4 + 160) + catalogRefusalsMax * (catalogRefusalCharsMax * 4 + 64) + catalogRevokedTokensMax * (apiTokenIdChars + 16) + catalogSnapshotsMax * (catalogNameCharsMax * 4 + 64),
    "a full catalog fits a snapshot",
  );
  assert(catalogSnapshotBytesMax + 1024 * 1024 <= peerFrameBytesMax, "a full catalog snapshot travels in one Raft message");
  assert(catalogLogTailEntries >= 0 && catalogLogTailEntries < catalogSnapshotEntries, "the log kept behind a catalog snapshot is shorter than the interval between two");
  assert(volumeBytesMax <= Number.MAX_SAFE_INTEGER && nodeBytesMax <= Number.MAX_SAFE_INTEGER, "byte counts are exact doubles");
  assert(volumeBytesMax % sectorBytes === 0, "the largest volume is whole sectors");
  assert(Number.isSafeInteger(catalogTimeMsMax) && !Number.isNaN(new Date(catalogTimeMsMax).getTime()), "the latest command time is a valid Date");
}

export function checkConstants(): void {
  assert(apiBodyDepthMax >= 2, "a join request's labels nest two deep");
  assert(nbdConnectionsPerAddressMax * 4 <= nbdConnectionsMax, "one client address takes at most a quarter of the NBD slots");
  assert(backupChunkBytes >= backupChunkBytesMin && backupChunkBytes <= backupChunkBytesMax && backupChunkBytes % sectorBytes === 0, "the backup chunk size is one a manifest may name, in whole sectors");
  assert(backupChunkBytes <= nbdClientPayloadBytesMax, "a backup chunk is at most one NBD request");
  assert(backupChunkBytes * backupChunksInFlight * 2 <= backupBytesInFlightMax, "the default chunks in flight, read and compressed, fit the bound");
  assert(backupChunkBytesMax * 2 <= 4 * backupBytesInFlightMax, "one largest chunk, read and compressed, is at most four times the bound");
  assert((volumeBytesMax / backupChunkBytesMax) * backupManifestEntryBytes + 64 * 1024 <= backupManifestBytesMax, "the largest volume's manifest fits at the largest chunk size");
  assert(nbdClientPayloadBytesMax <= nbdPayloadBytesMax, "the client asks no more than pxd's own server takes");
  assert(segmentBytes % sectorBytes === 0, "segments hold whole sectors");
  assert(checksumBlockBytes % sectorBytes === 0 && recordPayloadBytesMax % checksumBlockBytes === 0, "checksum blocks are whole sectors and records hold whole blocks");
  assert(recordPayloadBytesMax + 2 * recordHeaderBytes < segmentBytes, "a record fits a segment with its seal");
  assert(commitBytesMax >= recordPayloadBytesMax + recordHeaderBytes, "a commit holds the largest record");
  assert(commitRecordsMax < 65536, "batch position fits u16");
  assert(checkpointLogBytes >= segmentBytes, "checkpoints are at most one per segment");
  assert(gcLiveRatioMax > 0 && gcLiveRatioMax < 1, "gc threshold is a ratio");
  assert(gcSpaceAmpMax >= 1, "gc space amplification bound is at least 1");
  assert(ioNodeRequestsInFlightMax >= 1 && ioNodeRequestsInFlightMax <= qosQueuedRequestsMax, "the node runs at least one volume request at once");
  assert(ioFairQuantumBytes >= ioFairRequestCostBytes, "a fair-share round pays for at least one small request");
  assert(qosBandwidthBytesMin <= qosBandwidthBytesMax && qosBurstSecDefault >= 1 && qosBurstSecDefault <= qosBurstSecMax, "QoS bounds are ordered");
}
