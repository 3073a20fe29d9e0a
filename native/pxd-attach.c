// pxd-attach: the attach agent. It hands TCP connections to pxd nodes to the
// Linux kernel's NBD driver through its generic-netlink family ("nbd"), and
// stays running for the device's lifetime: when the kernel reports a dead
// connection (NBD_CMD_LINK_DEAD) or its own health check finds the device
// without a live connection, it connects to another node that serves the
// volume, does the NBD handshake, and RECONFIGUREs the device. The kernel
// holds requests for up to the dead-connection timeout and sends them again
// on the new connection, so a failover within that timeout is invisible to
// the filesystem. Requests still waiting when the timeout ends fail with EIO.
// A volume grown online grows the device in place: every SIZE_CHECK_MS, or
// at once on SIGHUP, the agent asks its server the export's size (one more
// handshake) and sets a larger one with NBD_CMD_RECONFIGURE and
// NBD_ATTR_SIZE_BYTES (Linux 5.1 on); it never shrinks the device.
//
// Usage:
//   pxd-attach connect --export NAME --server HOST:PORT [--server ...]
//                      [--nodes-url HOST:PORT/PATH] [--device N] [--connections K]
//                      [--timeout S] [--io-timeout S] [--read-only] [--backend ID]
//       Prints "/dev/nbdN HOST:PORT" (the device, the server it uses) on
//       stdout once the device is connected, closes
//       stdout, and supervises the device until it is disconnected or the
//       agent gets SIGTERM/SIGINT (then it disconnects the device). SIGHUP:
//       check the export's size now.
//   pxd-attach adopt N --export NAME --server HOST:PORT [...]
//       Takes over /dev/nbdN after its agent died: reconnects once, in
//       place of any connection that died meanwhile, then supervises it.
//   pxd-attach disconnect N
//   pxd-attach status [N]          one line per device: "nbdN connected|idle"
//
// The handshake is fixed newstyle with NBD_OPT_GO and no structured replies
// (the kernel has none). --nodes-url names a pxd API endpoint that answers
// GET with one "HOST:PORT" line per node serving the export; the agent asks
// it (any node's API) before each failover, so the server list follows the
// cluster. Exit codes: 0 done, 1 usage, 2 no nbd kernel module, 3 no server
// could be reached, 4 the kernel refused the device, 5 export refused.

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

// ---- the kernel's NBD netlink interface (include/uapi/linux/nbd-netlink.h)
enum { NBD_ATTR_INDEX = 1, NBD_ATTR_SIZE_BYTES, NBD_ATTR_BLOCK_SIZE_BYTES, NBD_ATTR_TIMEOUT,
       NBD_ATTR_SERVER_FLAGS, NBD_ATTR_CLIENT_FLAGS, NBD_ATTR_SOCKETS, NBD_ATTR_DEAD_CONN_TIMEOUT,
       NBD_ATTR_DEVICE_LIST, NBD_ATTR_BACKEND_IDENTIFIER };
enum { NBD_DEVICE_ITEM = 1 };
enum { NBD_DEVICE_INDEX = 1, NBD_DEVICE_CONNECTED };
enum { NBD_SOCK_ITEM = 1 };
enum { NBD_SOCK_FD = 1 };
enum { NBD_CMD_CONNECT = 1, NBD_CMD_DISCONNECT, NBD_CMD_RECONFIGURE, NBD_CMD_LINK_DEAD, NBD_CMD_STATUS };

// ---- the NBD protocol (nbd-proto.md)
#define NBD_FLAG_FIXED_NEWSTYLE 1u
#define NBD_FLAG_NO_ZEROES 2u
#define NBD_FLAG_C_FIXED_NEWSTYLE 1u
#define NBD_FLAG_C_NO_ZEROES 2u
#define NBD_OPT_GO 7u
#define NBD_REP_ACK 1u
#define NBD_REP_INFO 3u
#define NBD_REP_FLAG_ERROR (1u << 31)
#define NBD_REP_ERR_UNKNOWN (NBD_REP_FLAG_ERROR | 6u)
#define NBD_INFO_EXPORT 0u
#define NBD_INFO_BLOCK_SIZE 3u
#define NBD_TFLAG_READ_ONLY (1u << 1)
#define NBD_OPTS_MAGIC 0x49484156454F5054ull /* "IHAVEOPT" */
#define NBD_REP_MAGIC 0x3e889045565a9ull

// ---- bounds, each named
#define MAX_SERVERS 16            // servers from arguments or the nodes URL
#define MAX_CONNECTIONS 16        // sockets per device
#define MAX_OPTION_REPLY 4096     // longest handshake reply we read
#define MAX_OPTION_REPLIES 16     // replies to one NBD_OPT_GO before its ACK
#define HANDSHAKE_TIMEOUT_MS 3000 // connect plus handshake, per server
#define HEALTH_CHECK_MS 2000      // STATUS poll when no event arrives
#define SIZE_CHECK_MS 10000       // asks the server the export's size (a volume grown online)
#define LINK_DEAD_SETTLE_MS 200   // after a dead connection, before reconnecting
#define BACKLOG_MS 2000           // a death reported this soon after a reconnect predates it
#define NL_BUF 16384
#define MAX_NAME 4096             // NBD export names are at most 4096 bytes

static int debug_on;
// One write per line, so a line never mixes with another writer's on a
// shared console. `stamp`: lead with the time of day (the log), or not (die).
static void vlog(int stamp, const char *fmt, va_list ap) {
  char line[1024];
  int n = 0;
  if (stamp) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    n = snprintf(line, sizeof line, "%02d:%02d:%02d.%03ld ", tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
  }
  n += snprintf(line + n, sizeof line - (size_t)n, "pxd-attach: ");
  n += vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
  if (n > (int)sizeof line - 2) n = (int)sizeof line - 2;
  line[n++] = '\n';
  ssize_t w = write(2, line, (size_t)n);
  (void)w;
}

static void logf_(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vlog(1, fmt, ap);
  va_end(ap);
}
#define LOG(...) logf_(__VA_ARGS__)
#define DEBUG(...) do { if (debug_on) logf_(__VA_ARGS__); } while (0)

static void die(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vlog(0, fmt, ap);
  va_end(ap);
  exit(code);
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

// ============================================================ generic netlink

struct nl {
  int fd;
  uint32_t seq;
  uint16_t family;
  uint32_t mcast_group;
};

struct msg {
  char buf[NL_BUF] __attribute__((aligned(4)));
  size_t len;
};

static void msg_begin(struct msg *m, uint16_t type, uint16_t flags, uint8_t cmd, uint32_t seq) {
  memset(m->buf, 0, NLMSG_HDRLEN + GENL_HDRLEN);
  struct nlmsghdr *h = (struct nlmsghdr *)m->buf;
  h->nlmsg_type = type;
  h->nlmsg_flags = flags;
  h->nlmsg_seq = seq;
  struct genlmsghdr *g = (struct genlmsghdr *)(m->buf + NLMSG_HDRLEN);
  g->cmd = cmd;
  g->version = 1;
  m->len = NLMSG_HDRLEN + GENL_HDRLEN;
}

static void msg_put(struct msg *m, uint16_t type, const void *data, size_t len) {
  size_t need = NLA_ALIGN(NLA_HDRLEN + len);
  if (m->len + need > sizeof m->buf) die(4, "netlink message too long (bug)");
  struct nlattr *a = (struct nlattr *)(m->buf + m->len);
  a->nla_type = type;
  a->nla_len = (uint16_t)(NLA_HDRLEN + len);
  memcpy((char *)a + NLA_HDRLEN, data, len);
  memset((char *)a + NLA_HDRLEN + len, 0, need - NLA_HDRLEN - len);
  m->len += need;
}
static void msg_u32(struct msg *m, uint16_t type, uint32_t v) { msg_put(m, type, &v, 4); }
static void msg_u64(struct msg *m, uint16_t type, uint64_t v) { msg_put(m, type, &v, 8); }
static size_t msg_nest(struct msg *m, uint16_t type) {
  size_t at = m->len;
  msg_put(m, type | NLA_F_NESTED, NULL, 0);
  return at;
}
static void msg_nest_end(struct msg *m, size_t at) {
  ((struct nlattr *)(m->buf + at))->nla_len = (uint16_t)(m->len - at);
}

// The next attribute of [*p, *p + *len), or NULL at the end or at one whose
// length does not fit; *p and *len move past it.
static const struct nlattr *attr_next(const char **p, size_t *len) {
  if (*len < NLA_HDRLEN) return NULL;
  const struct nlattr *a = (const struct nlattr *)*p;
  if (a->nla_len < NLA_HDRLEN || a->nla_len > *len) return NULL;
  size_t step = NLA_ALIGN(a->nla_len);
  if (step > *len) step = *len;
  *p += step;
  *len -= step;
  return a;
}

// Walks the attributes in [p, p+len) and stores the first of each type < max.
static void attrs_parse(const char *p, size_t len, const struct nlattr **out, int max) {
  for (int i = 0; i < max; i++) out[i] = NULL;
  for (const struct nlattr *a; (a = attr_next(&p, &len)) != NULL;) {
    int t = a->nla_type & NLA_TYPE_MASK;
    if (t < max && !out[t]) out[t] = a;
  }
}
static const char *attr_data(const struct nlattr *a) { return (const char *)a + NLA_HDRLEN; }
static size_t attr_len(const struct nlattr *a) { return a->nla_len - NLA_HDRLEN; }
static uint32_t attr_u32(const struct nlattr *a) { uint32_t v = 0; memcpy(&v, attr_data(a), attr_len(a) >= 4 ? 4 : attr_len(a)); return v; }
static uint16_t attr_u16(const struct nlattr *a) { uint16_t v = 0; memcpy(&v, attr_data(a), attr_len(a) >= 2 ? 2 : attr_len(a)); return v; }
static uint8_t attr_u8(const struct nlattr *a) { return attr_len(a) ? *(const uint8_t *)attr_data(a) : 0; }

typedef void (*reply_fn)(const struct nlmsghdr *h, void *arg);

// The attributes of a generic-netlink message, or 0 when it is too short to
// have a genl header (NLMSG_OK has already checked nlmsg_len against what
// was received).
static int genl_attrs(const struct nlmsghdr *h, const char **p, size_t *len) {
  if (h->nlmsg_len < NLMSG_HDRLEN + GENL_HDRLEN) return 0;
  *p = (const char *)NLMSG_DATA(h) + GENL_HDRLEN;
  *len = h->nlmsg_len - NLMSG_HDRLEN - GENL_HDRLEN;
  return 1;
}

// recv that keeps only what the kernel sent (nl_pid 0): another process may
// send to our port or, with CAP_NET_ADMIN, to the multicast group.
static ssize_t recv_kernel(int fd, char *buf, size_t size, int flags) {
  for (;;) {
    struct sockaddr_nl from;
    socklen_t fl = sizeof from;
    ssize_t n = recvfrom(fd, buf, size, flags, (struct sockaddr *)&from, &fl);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 || (fl >= sizeof from && from.nl_pid == 0)) return n;
  }
}

// Sends m and reads replies up to the kernel's ACK or error. Returns 0 or
// -errno; each reply message that is not the ACK goes to on_reply.
static int nl_call(struct nl *nl, struct msg *m, reply_fn on_reply, void *arg) {
  struct nlmsghdr *h = (struct nlmsghdr *)m->buf;
  h->nlmsg_len = (uint32_t)m->len;
  h->nlmsg_seq = ++nl->seq;
  struct sockaddr_nl to = { .nl_family = AF_NETLINK };
  if (sendto(nl->fd, m->buf, m->len, 0, (struct sockaddr *)&to, sizeof to) < 0) return -errno;
  static char rbuf[NL_BUF] __attribute__((aligned(4)));
  for (;;) {
    ssize_t n = recv_kernel(nl->fd, rbuf, sizeof rbuf, 0);
    if (n < 0) return -errno;
    size_t left = (size_t)n;
    for (struct nlmsghdr *r = (struct nlmsghdr *)rbuf; NLMSG_OK(r, left); r = NLMSG_NEXT(r, left)) {
      if (r->nlmsg_seq != nl->seq) continue;
      if (r->nlmsg_type == NLMSG_ERROR) {
        if (r->nlmsg_len < NLMSG_HDRLEN + sizeof(struct nlmsgerr)) return -EPROTO;
        struct nlmsgerr *e = (struct nlmsgerr *)NLMSG_DATA(r);
        return e->error; // 0 is the ACK
      }
      if (r->nlmsg_type == NLMSG_DONE) return 0;
      if (on_reply) on_reply(r, arg);
    }
  }
}

static int nl_socket(void) {
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC);
  if (fd < 0) die(4, "cannot open a netlink socket: %s", strerror(errno));
  struct sockaddr_nl me = { .nl_family = AF_NETLINK };
  if (bind(fd, (struct sockaddr *)&me, sizeof me) < 0) die(4, "cannot bind a netlink socket: %s", strerror(errno));
  return fd;
}

struct family_info { uint16_t id; uint32_t group; };

static void on_family(const struct nlmsghdr *h, void *arg) {
  struct family_info *fi = arg;
  const char *p;
  size_t len;
  if (!genl_attrs(h, &p, &len)) return;
  const struct nlattr *at[CTRL_ATTR_MAX + 1];
  attrs_parse(p, len, at, CTRL_ATTR_MAX + 1);
  if (at[CTRL_ATTR_FAMILY_ID]) fi->id = attr_u16(at[CTRL_ATTR_FAMILY_ID]);
  if (!at[CTRL_ATTR_MCAST_GROUPS]) return;
  const char *g = attr_data(at[CTRL_ATTR_MCAST_GROUPS]);
  size_t glen = attr_len(at[CTRL_ATTR_MCAST_GROUPS]);
  for (const struct nlattr *item; (item = attr_next(&g, &glen)) != NULL;) {
    const struct nlattr *ga[CTRL_ATTR_MCAST_GRP_MAX + 1];
    attrs_parse(attr_data(item), attr_len(item), ga, CTRL_ATTR_MCAST_GRP_MAX + 1);
    const struct nlattr *name = ga[CTRL_ATTR_MCAST_GRP_NAME];
    if (name && ga[CTRL_ATTR_MCAST_GRP_ID] && attr_len(name) >= sizeof "nbd_mc_group" &&
        memcmp(attr_data(name), "nbd_mc_group", sizeof "nbd_mc_group") == 0)
      fi->group = attr_u32(ga[CTRL_ATTR_MCAST_GRP_ID]);
  }
}

static int resolve_family(struct nl *nl) {
  struct msg m;
  msg_begin(&m, GENL_ID_CTRL, NLM_F_REQUEST | NLM_F_ACK, CTRL_CMD_GETFAMILY, 0);
  msg_put(&m, CTRL_ATTR_FAMILY_NAME, "nbd", 4);
  struct family_info fi = { 0, 0 };
  int err = nl_call(nl, &m, on_family, &fi);
  if (err < 0 || fi.id == 0) return err < 0 ? err : -ENOENT;
  nl->family = fi.id;
  nl->mcast_group = fi.group;
  return 0;
}

// Opens a netlink socket to the nbd family, loading the module once if the
// family is missing. Exits 2 with what to do when there is none.
static void nl_open(struct nl *nl) {
  nl->fd = nl_socket();
  nl->seq = (uint32_t)time(NULL);
  if (resolve_family(nl) == 0) return;
  pid_t pid = fork();
  if (pid == 0) {
    int devnull = open("/dev/null", O_RDWR);
    if (devnull >= 0) { dup2(devnull, 1); dup2(devnull, 2); }
    execlp("modprobe", "modprobe", "nbd", (char *)NULL);
    _exit(127);
  }
  if (pid > 0) waitpid(pid, NULL, 0);
  if (resolve_family(nl) == 0) return;
  die(2, "the kernel has no nbd module (modprobe nbd failed): install it, or attach with --via fuse");
}

// ============================================================ NBD handshake

struct server { char host[256]; char port[16]; };

struct export_info {
  uint64_t size;
  uint16_t flags;
  uint32_t min_block, pref_block, max_block;
};

static int read_full(int fd, void *buf, size_t len) {
  char *p = buf;
  while (len > 0) {
    ssize_t n = read(fd, p, len);
    if (n == 0) { errno = ECONNRESET; return -1; }
    if (n < 0) { if (errno == EINTR) continue; return -1; }
    p += n;
    len -= (size_t)n;
  }
  return 0;
}
static int write_full(int fd, const void *buf, size_t len) {
  const char *p = buf;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0) { if (errno == EINTR) continue; return -1; }
    p += n;
    len -= (size_t)n;
  }
  return 0;
}
static uint64_t be64(const unsigned char *p) { uint64_t v = 0; for (int i = 0; i < 8; i++) v = v << 8 | p[i]; return v; }
static uint32_t be32(const unsigned char *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
static uint16_t be16(const unsigned char *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static void put64(unsigned char *p, uint64_t v) { for (int i = 7; i >= 0; i--) { p[i] = v & 0xff; v >>= 8; } }
static void put32(unsigned char *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }
static void put16(unsigned char *p, uint16_t v) { p[0] = v >> 8; p[1] = v; }

// Connects within the handshake timeout; returns the socket or -1.
// A numeric address needs no resolver, so a static build without NSS works.
static int tcp_connect(const struct server *s, int timeout_ms) {
  struct sockaddr_storage ss;
  socklen_t sslen = 0;
  memset(&ss, 0, sizeof ss);
  unsigned port = (unsigned)atoi(s->port);
  struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
  struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
  if (inet_pton(AF_INET, s->host, &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons((uint16_t)port);
    sslen = sizeof *v4;
  } else if (inet_pton(AF_INET6, s->host, &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons((uint16_t)port);
    sslen = sizeof *v6;
  } else {
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *res = NULL;
    if (getaddrinfo(s->host, s->port, &hints, &res) != 0 || !res) { errno = EHOSTUNREACH; return -1; }
    memcpy(&ss, res->ai_addr, res->ai_addrlen);
    sslen = res->ai_addrlen;
    freeaddrinfo(res);
  }
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  int rc = connect(fd, (struct sockaddr *)&ss, sslen);
  if (rc < 0 && errno != EINPROGRESS) { close(fd); return -1; }
  if (rc < 0) {
    struct pollfd p = { .fd = fd, .events = POLLOUT };
    if (poll(&p, 1, timeout_ms) != 1) { close(fd); errno = ETIMEDOUT; return -1; }
    int err = 0;
    socklen_t el = sizeof err;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
    if (err) { close(fd); errno = err; return -1; }
  }
  int flags = fcntl(fd, F_GETFL);
  fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
  struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  return fd;
}

// The server does not know the export (NBD_REP_ERR_UNKNOWN): the volume is gone.
#define HS_REFUSED -2

// Fixed newstyle handshake ending in NBD_OPT_GO. Returns 0, -1 (connection
// failed: try another server) or HS_REFUSED with why filled in.
static int handshake(int fd, const char *name, struct export_info *info, char *why, size_t whylen) {
  unsigned char b[18];
  if (read_full(fd, b, 18) < 0) { snprintf(why, whylen, "greeting: %s", strerror(errno)); return -1; }
  if (memcmp(b, "NBDMAGIC", 8) != 0 || be64(b + 8) != NBD_OPTS_MAGIC) { snprintf(why, whylen, "not a newstyle NBD server"); return -1; }
  uint16_t hflags = be16(b + 16);
  if (!(hflags & NBD_FLAG_FIXED_NEWSTYLE)) { snprintf(why, whylen, "server lacks fixed newstyle"); return -1; }
  uint32_t cflags = NBD_FLAG_C_FIXED_NEWSTYLE | (hflags & NBD_FLAG_NO_ZEROES ? NBD_FLAG_C_NO_ZEROES : 0);
  size_t nlen = strlen(name);
  unsigned char opt[16 + 4 + MAX_NAME + 2 + 2];
  put32(opt, cflags);
  if (write_full(fd, opt, 4) < 0) { snprintf(why, whylen, "client flags: %s", strerror(errno)); return -1; }
  put64(opt, NBD_OPTS_MAGIC);
  put32(opt + 8, NBD_OPT_GO);
  put32(opt + 12, (uint32_t)(4 + nlen + 2 + 2));
  put32(opt + 16, (uint32_t)nlen);
  memcpy(opt + 20, name, nlen);
  put16(opt + 20 + nlen, 1);
  put16(opt + 22 + nlen, NBD_INFO_BLOCK_SIZE);
  if (write_full(fd, opt, 24 + nlen) < 0) { snprintf(why, whylen, "NBD_OPT_GO: %s", strerror(errno)); return -1; }
  int have_export = 0;
  info->min_block = 1;
  info->pref_block = 4096;
  info->max_block = 32 * 1024 * 1024;
  for (int replies = 0;; replies++) {
    unsigned char h[20];
    if (replies == MAX_OPTION_REPLIES) { snprintf(why, whylen, "more than %d replies to NBD_OPT_GO", MAX_OPTION_REPLIES); return -1; }
    if (read_full(fd, h, 20) < 0) { snprintf(why, whylen, "option reply: %s", strerror(errno)); return -1; }
    if (be64(h) != NBD_REP_MAGIC) { snprintf(why, whylen, "bad option reply magic"); return -1; }
    uint32_t type = be32(h + 12), len = be32(h + 16);
    if (len > MAX_OPTION_REPLY) { snprintf(why, whylen, "option reply of %u bytes", len); return -1; }
    unsigned char data[MAX_OPTION_REPLY + 1];
    if (read_full(fd, data, len) < 0) { snprintf(why, whylen, "option reply: %s", strerror(errno)); return -1; }
    data[len] = 0;
    if (type & NBD_REP_FLAG_ERROR) {
      snprintf(why, whylen, "export \"%.200s\" refused: %.250s", name, len ? (char *)data : "no reason given");
      // Only "unknown export" says the volume is gone; any other refusal is this server's trouble.
      return type == NBD_REP_ERR_UNKNOWN ? HS_REFUSED : -1;
    }
    if (type == NBD_REP_ACK) break;
    if (type != NBD_REP_INFO || len < 2) continue;
    uint16_t it = be16(data);
    if (it == NBD_INFO_EXPORT && len >= 12) {
      info->size = be64(data + 2);
      info->flags = be16(data + 10);
      have_export = 1;
    } else if (it == NBD_INFO_BLOCK_SIZE && len >= 14) {
      info->min_block = be32(data + 2);
      info->pref_block = be32(data + 6);
      info->max_block = be32(data + 10);
    }
  }
  if (!have_export) { snprintf(why, whylen, "server sent no export information"); return -1; }
  struct timeval zero = { 0, 0 };
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &zero, sizeof zero);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &zero, sizeof zero);
  return 0;
}

// ============================================================ configuration

struct config {
  const char *export_name;
  struct server servers[MAX_SERVERS];
  int nservers;
  int current;                 // index of the server the device uses now
  struct server nodes_api;     // where --nodes-url points, if given
  char nodes_path[512];
  int have_nodes_url;
  int device;                  // -1: the kernel picks
  int connections;
  int offer;                   // sockets the next connect opens: `connections`, or as many as died
  uint64_t reconnected_at;     // when a failover last gave the kernel new sockets (monotonic ms)
  unsigned timeout_s;          // dead-connection timeout
  unsigned io_timeout_s;       // one request's timeout before its connection is called dead
  int read_only;
  char backend[256];
};

static int parse_hostport(const char *s, struct server *out) {
  const char *colon = strrchr(s, ':');
  if (!colon || colon == s || !colon[1]) return -1;
  size_t hl = (size_t)(colon - s);
  if (s[0] == '[' && colon[-1] == ']') { s++; hl -= 2; }
  if (hl >= sizeof out->host || strlen(colon + 1) >= sizeof out->port) return -1;
  memcpy(out->host, s, hl);
  out->host[hl] = 0;
  strcpy(out->port, colon + 1);
  return 0;
}

// Asks the nodes URL for the servers of the export: an HTTP/1.0 GET whose
// body is one HOST:PORT per line. Keeps the old list when it fails.
static void refresh_servers(struct config *c) {
  if (!c->have_nodes_url) return;
  int fd = tcp_connect(&c->nodes_api, HANDSHAKE_TIMEOUT_MS);
  if (fd < 0) { DEBUG("nodes url %s:%s: %s", c->nodes_api.host, c->nodes_api.port, strerror(errno)); return; }
  char req[1024];
  int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", c->nodes_path, c->nodes_api.host);
  char resp[8192];
  size_t got = 0;
  if (n > 0 && (size_t)n < sizeof req && write_full(fd, req, (size_t)n) == 0) {
    for (;;) {
      ssize_t r = read(fd, resp + got, sizeof resp - 1 - got);
      if (r <= 0) break;
      got += (size_t)r;
      if (got == sizeof resp - 1) break;
    }
  }
  close(fd);
  resp[got] = 0;
  if (strncmp(resp, "HTTP/1.", 7) != 0 || strncmp(resp + 9, "200", 3) != 0) return;
  char *body = strstr(resp, "\r\n\r\n");
  if (!body) return;
  body += 4;
  struct server fresh[MAX_SERVERS];
  int count = 0;
  for (char *line = strtok(body, "\r\n"); line && count < MAX_SERVERS; line = strtok(NULL, "\r\n"))
    if (parse_hostport(line, &fresh[count]) == 0) count++;
  if (count == 0) return;
  // Keep the current server's position meaningful: start after it next time.
  struct server cur = c->servers[c->current];
  memcpy(c->servers, fresh, sizeof fresh[0] * (size_t)count);
  c->nservers = count;
  c->current = 0;
  for (int i = 0; i < count; i++)
    if (strcmp(fresh[i].host, cur.host) == 0 && strcmp(fresh[i].port, cur.port) == 0) c->current = i;
  DEBUG("nodes url gave %d servers", count);
}

// Connects c->offer sockets to one server and handshakes each. Returns 0 with fds
// filled, -1 if the server could not be reached, HS_REFUSED if it refused.
static int connect_server(const struct config *c, const struct server *s, int *fds, struct export_info *info, char *why, size_t whylen) {
  for (int i = 0; i < c->offer; i++) fds[i] = -1;
  for (int i = 0; i < c->offer; i++) {
    fds[i] = tcp_connect(s, HANDSHAKE_TIMEOUT_MS);
    int rc = fds[i] < 0 ? -1 : 0;
    if (fds[i] < 0) snprintf(why, whylen, "connect: %s", strerror(errno));
    else rc = handshake(fds[i], c->export_name, info, why, whylen);
    if (rc != 0) {
      for (int j = 0; j <= i; j++) if (fds[j] >= 0) close(fds[j]);
      return rc;
    }
  }
  return 0;
}

// Tries every server once, starting with `first`. Returns the server's index,
// or -1 (all unreachable) / HS_REFUSED.
static int connect_any(struct config *c, int first, int *fds, struct export_info *info, int quiet) {
  int refused = 0;
  for (int k = 0; k < c->nservers; k++) {
    int i = (first + k) % c->nservers;
    char why[512] = "";
    int rc = connect_server(c, &c->servers[i], fds, info, why, sizeof why);
    if (rc == 0) return i;
    if (!quiet) LOG("%s:%s: %s", c->servers[i].host, c->servers[i].port, why);
    if (rc == HS_REFUSED) refused = 1;
  }
  return refused ? HS_REFUSED : -1;
}

// ============================================================ device commands

static void put_sockets(struct msg *m, const int *fds, int n) {
  size_t socks = msg_nest(m, NBD_ATTR_SOCKETS);
  for (int i = 0; i < n; i++) {
    size_t item = msg_nest(m, NBD_SOCK_ITEM);
    msg_u32(m, NBD_SOCK_FD, (uint32_t)fds[i]);
    msg_nest_end(m, item);
  }
  msg_nest_end(m, socks);
}

static void on_index(const struct nlmsghdr *h, void *arg) {
  const struct nlattr *at[NBD_ATTR_BACKEND_IDENTIFIER + 1];
  const char *p;
  size_t len;
  if (!genl_attrs(h, &p, &len)) return;
  attrs_parse(p, len, at, NBD_ATTR_BACKEND_IDENTIFIER + 1);
  if (at[NBD_ATTR_INDEX]) *(int *)arg = (int)attr_u32(at[NBD_ATTR_INDEX]);
}

static uint32_t block_size(const struct export_info *info) {
  uint32_t b = info->pref_block;
  if (b < 512) b = 512;
  if (b > 4096) b = 4096;
  if (b & (b - 1)) b = 4096;
  return b;
}

static uint64_t server_flags(const struct config *c, const struct export_info *info) {
  uint64_t f = info->flags;
  if (c->read_only) f |= NBD_TFLAG_READ_ONLY;
  return f;
}

static int device_connect(struct nl *nl, const struct config *c, const int *fds, const struct export_info *info, int *index) {
  struct msg m;
  msg_begin(&m, nl->family, NLM_F_REQUEST | NLM_F_ACK, NBD_CMD_CONNECT, 0);
  if (c->device >= 0) msg_u32(&m, NBD_ATTR_INDEX, (uint32_t)c->device);
  msg_u64(&m, NBD_ATTR_SIZE_BYTES, info->size);
  msg_u64(&m, NBD_ATTR_BLOCK_SIZE_BYTES, block_size(info));
  msg_u64(&m, NBD_ATTR_SERVER_FLAGS, server_flags(c, info));
  msg_u64(&m, NBD_ATTR_TIMEOUT, c->io_timeout_s);
  msg_u64(&m, NBD_ATTR_DEAD_CONN_TIMEOUT, c->timeout_s);
  if (c->backend[0]) msg_put(&m, NBD_ATTR_BACKEND_IDENTIFIER, c->backend, strlen(c->backend) + 1);
  put_sockets(&m, fds, c->offer);
  *index = c->device;
  return nl_call(nl, &m, on_index, index);
}

static int device_reconfigure(struct nl *nl, const struct config *c, int index, const int *fds) {
  struct msg m;
  msg_begin(&m, nl->family, NLM_F_REQUEST | NLM_F_ACK, NBD_CMD_RECONFIGURE, 0);
  msg_u32(&m, NBD_ATTR_INDEX, (uint32_t)index);
  if (c->backend[0]) msg_put(&m, NBD_ATTR_BACKEND_IDENTIFIER, c->backend, strlen(c->backend) + 1);
  put_sockets(&m, fds, c->offer);
  return nl_call(nl, &m, NULL, NULL);
}

static int device_resize(struct nl *nl, int index, uint64_t size) {
  struct msg m;
  msg_begin(&m, nl->family, NLM_F_REQUEST | NLM_F_ACK, NBD_CMD_RECONFIGURE, 0);
  msg_u32(&m, NBD_ATTR_INDEX, (uint32_t)index);
  msg_u64(&m, NBD_ATTR_SIZE_BYTES, size);
  return nl_call(nl, &m, NULL, NULL);
}

// The device's size as the kernel has it (sysfs counts 512-byte sectors); 0 when unknown.
static uint64_t device_bytes(int index) {
  char path[64];
  snprintf(path, sizeof path, "/sys/block/nbd%d/size", index);
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  unsigned long long sectors = 0;
  int ok = fscanf(f, "%llu", &sectors) == 1;
  fclose(f);
  return ok ? (uint64_t)sectors * 512 : 0;
}

// Asks the server the device uses for the export's size (a handshake on a
// connection closed at once) and grows the device to it when it is larger:
// a volume grown online. Never shrinks; a refusal is logged once per size.
static void check_size(struct nl *nl, const struct config *c, int index) {
  static uint64_t refused_size;
  const struct server *s = &c->servers[c->current];
  struct export_info info;
  char why[512] = "";
  int fd = tcp_connect(s, HANDSHAKE_TIMEOUT_MS);
  int rc = fd < 0 ? -1 : handshake(fd, c->export_name, &info, why, sizeof why);
  if (fd >= 0) close(fd);
  if (rc != 0) {
    DEBUG("nbd%d: size check at %s:%s: %s", index, s->host, s->port, fd < 0 ? strerror(errno) : why);
    return;
  }
  uint64_t now = device_bytes(index);
  if (now == 0 || info.size <= now || info.size == refused_size) return;
  int err = device_resize(nl, index, info.size);
  if (err < 0) {
    refused_size = info.size;
    LOG("nbd%d: export \"%s\" grew to %llu bytes, but the kernel refused the new size: %s; detach and attach again to see it", index, c->export_name, (unsigned long long)info.size, strerror(-err));
    return;
  }
  LOG("nbd%d: export \"%s\" grew from %llu to %llu bytes; the device has the new size", index, c->export_name, (unsigned long long)now, (unsigned long long)info.size);
}

static int device_disconnect(struct nl *nl, int index) {
  struct msg m;
  msg_begin(&m, nl->family, NLM_F_REQUEST | NLM_F_ACK, NBD_CMD_DISCONNECT, 0);
  msg_u32(&m, NBD_ATTR_INDEX, (uint32_t)index);
  return nl_call(nl, &m, NULL, NULL);
}

struct status_walk { int want; int found; int connected; int print; };

static void on_status(const struct nlmsghdr *h, void *arg) {
  struct status_walk *w = arg;
  const struct nlattr *at[NBD_ATTR_BACKEND_IDENTIFIER + 1];
  const char *ap;
  size_t alen;
  if (!genl_attrs(h, &ap, &alen)) return;
  attrs_parse(ap, alen, at, NBD_ATTR_BACKEND_IDENTIFIER + 1);
  if (!at[NBD_ATTR_DEVICE_LIST]) return;
  const char *p = attr_data(at[NBD_ATTR_DEVICE_LIST]);
  size_t len = attr_len(at[NBD_ATTR_DEVICE_LIST]);
  for (const struct nlattr *item; (item = attr_next(&p, &len)) != NULL;) {
    const struct nlattr *d[NBD_DEVICE_CONNECTED + 1];
    attrs_parse(attr_data(item), attr_len(item), d, NBD_DEVICE_CONNECTED + 1);
    if (d[NBD_DEVICE_INDEX]) {
      int idx = (int)attr_u32(d[NBD_DEVICE_INDEX]);
      int conn = d[NBD_DEVICE_CONNECTED] ? attr_u8(d[NBD_DEVICE_CONNECTED]) : 0;
      if (w->print) printf("nbd%d %s\n", idx, conn ? "connected" : "idle");
      if (idx == w->want) { w->found = 1; w->connected = conn; }
    }
  }
}

static int device_status(struct nl *nl, int index, struct status_walk *w) {
  struct msg m;
  msg_begin(&m, nl->family, NLM_F_REQUEST | NLM_F_ACK, NBD_CMD_STATUS, 0);
  if (index >= 0) msg_u32(&m, NBD_ATTR_INDEX, (uint32_t)index);
  w->want = index;
  w->found = 0;
  w->connected = 0;
  return nl_call(nl, &m, on_status, w);
}

// ============================================================ supervision

static volatile sig_atomic_t stop_requested;
static void on_signal(int sig) { (void)sig; stop_requested = 1; }
static volatile sig_atomic_t size_check_requested;
static void on_hup(int sig) { (void)sig; size_check_requested = 1; }

static void close_all(int *fds, int n) { for (int i = 0; i < n; i++) if (fds[i] >= 0) close(fds[i]); }

// Moves the device to a live server: the next one after the current, going
// round the list (refreshed first) until one takes it, the device is gone,
// or the agent is told to stop. It offers `n` new sockets: as many as the
// kernel reported dead (a probe offers all K). The kernel takes each only in
// place of a dead socket, and keeps its own reference to each it takes, so
// all of ours are closed; since every LINK_DEAD follows the socket's death,
// n reported deaths are n dead sockets, and none offered is left over.
// Returns 0 once the device has a live connection again (or is gone), -1 when
// every server has refused the export for longer than the timeout (the
// volume was deleted): the device is then disconnected.
static int failover(struct nl *nl, struct config *c, int index, int probe, int n) {
  c->offer = n;
  // A death reported just after a reconnect is one from before it: the
  // server just taken is live, so it is tried first.
  int backlog = c->reconnected_at != 0 && now_ms() - c->reconnected_at < BACKLOG_MS;
  refresh_servers(c);
  int first = backlog ? c->current : (c->current + 1) % c->nservers;
  uint64_t refused_since = 0;
  for (int round = 0; !stop_requested; round++) {
    int fds[MAX_CONNECTIONS];
    struct export_info info;
    // Each server's failure is logged on the first round and every 20th, so a long outage does not fill the log.
    int i = connect_any(c, first, fds, &info, round % 20 != 0);
    if (i == HS_REFUSED) {
      if (refused_since == 0) refused_since = now_ms();
      if (now_ms() - refused_since > (uint64_t)c->timeout_s * 1000) {
        LOG("nbd%d: every server has refused export \"%s\" for %us; disconnecting the device", index, c->export_name, c->timeout_s);
        device_disconnect(nl, index);
        return -1;
      }
    } else {
      refused_since = 0;
    }
    if (i >= 0) {
      int err = device_reconfigure(nl, c, index, fds);
      close_all(fds, c->offer);
      if (err == 0) {
        c->current = i;
        c->reconnected_at = now_ms();
        if (probe) LOG("nbd%d: offered the kernel a connection to %s:%s in place of any dead one", index, c->servers[i].host, c->servers[i].port);
        else LOG("nbd%d: reconnected to %s:%s (%d connection%s)", index, c->servers[i].host, c->servers[i].port, n, n == 1 ? "" : "s");
        return 0;
      }
      LOG("nbd%d: the kernel refused the new connection: %s", index, strerror(-err));
    }
    struct status_walk w;
    if (device_status(nl, index, &w) == 0 && (!w.found || !w.connected)) return 0;
    // Nobody answered: wait a little, ask the cluster again, go round again.
    struct timespec pause = { 0, 500 * 1000000L };
    nanosleep(&pause, NULL);
    if (round % 4 == 3) refresh_servers(c);
    first = (c->current + 1) % c->nservers;
  }
  return 0;
}

// A socket that hears the nbd family's events (LINK_DEAD), opened before the
// device is connected so no event falls between the two.
static int event_socket(const struct nl *nl) {
  int fd = nl_socket();
  if (nl->mcast_group == 0) die(4, "the nbd netlink family has no multicast group");
  if (setsockopt(fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &nl->mcast_group, sizeof nl->mcast_group) < 0)
    die(4, "cannot listen for nbd events: %s", strerror(errno));
  return fd;
}

// Reads the events waiting on the event socket, without blocking; returns
// how many say a connection of device `index` died.
static int drain_events(int fd, uint16_t family, int index, int *overrun) {
  static char rbuf[NL_BUF] __attribute__((aligned(4)));
  int dead = 0;
  for (;;) {
    ssize_t got = recv_kernel(fd, rbuf, sizeof rbuf, MSG_DONTWAIT);
    if (got < 0 && errno == ENOBUFS) {
      *overrun = 1; // events were dropped: which connections died is not known
      continue;
    }
    if (got <= 0) return dead;
    size_t left = (size_t)got;
    for (struct nlmsghdr *h = (struct nlmsghdr *)rbuf; NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
      if (h->nlmsg_type != family || h->nlmsg_len < NLMSG_HDRLEN + GENL_HDRLEN) continue;
      struct genlmsghdr *g = (struct genlmsghdr *)NLMSG_DATA(h);
      if (g->cmd != NBD_CMD_LINK_DEAD) continue;
      int who = -1;
      on_index(h, &who);
      if (who == index) dead++;
    }
  }
}

static int supervise(struct nl *nl, struct config *c, int index, int event_fd) {
  uint64_t last_check = now_ms();
  uint64_t last_size_check = now_ms();
  int dead = 0;    // LINK_DEAD events not yet answered with a new socket
  int overrun = 0; // the event socket dropped events: offer all K sockets, as a probe
  while (!stop_requested) {
    struct pollfd p = { .fd = event_fd, .events = POLLIN };
    if (dead == 0 && !overrun && poll(&p, 1, HEALTH_CHECK_MS) > 0) {
      dead += drain_events(event_fd, nl->family, index, &overrun);
      if (dead > 0 || overrun) {
        LOG("nbd%d: the kernel reports a dead connection to %s:%s%s", index, c->servers[c->current].host, c->servers[c->current].port, overrun ? " (some reports were lost)" : "");
        // The other connections to that node die within moments: let the
        // kernel mark them too, so one reconnect replaces them all.
        struct timespec settle = { 0, LINK_DEAD_SETTLE_MS * 1000000L };
        nanosleep(&settle, NULL);
        dead += drain_events(event_fd, nl->family, index, &overrun);
      }
    }
    if (dead == 0 && !overrun && (size_check_requested || now_ms() - last_size_check >= SIZE_CHECK_MS)) {
      size_check_requested = 0;
      check_size(nl, c, index);
      last_size_check = now_ms();
    }
    if (dead == 0 && !overrun && now_ms() - last_check < HEALTH_CHECK_MS) continue;
    last_check = now_ms();
    struct status_walk w;
    int err = device_status(nl, index, &w);
    if (err == 0 && (!w.found || !w.connected)) {
      LOG("nbd%d: disconnected; the agent exits", index);
      return 0;
    }
    if (dead == 0 && !overrun) continue;
    int n = overrun || dead > c->connections ? c->connections : dead;
    if (failover(nl, c, index, overrun, n) < 0) return 0;
    overrun = 0;
    // Deaths reported while it reconnected are answered next.
    dead += drain_events(event_fd, nl->family, index, &overrun) - n;
    if (dead < 0) dead = 0;
  }
  LOG("nbd%d: stopping: disconnecting the device", index);
  device_disconnect(nl, index);
  return 0;
}

// ============================================================ main

static void usage(void) {
  fprintf(stderr,
          "usage: pxd-attach connect --export NAME --server HOST:PORT [--server HOST:PORT ...]\n"
          "                          [--nodes-url HOST:PORT/PATH] [--device N] [--connections K]\n"
          "                          [--timeout S] [--io-timeout S] [--read-only] [--backend ID] [--debug]\n"
          "       pxd-attach adopt N --export NAME --server HOST:PORT [...]   (take over a device whose agent died)\n"
          "       pxd-attach disconnect N\n"
          "       pxd-attach status [N]\n");
  exit(1);
}

static unsigned parse_uint(const char *s, const char *what, unsigned lo, unsigned hi) {
  char *end;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (errno || *end || end == s || v < lo || v > hi) die(1, "%s must be a whole number from %u to %u, not \"%s\"", what, lo, hi, s);
  return (unsigned)v;
}

static void parse_options(struct config *cfg, int argc, char **argv) {
  struct config c = *cfg;
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--read-only") == 0) { c.read_only = 1; continue; }
    if (strcmp(a, "--debug") == 0) { debug_on = 1; continue; }
    if (!v) usage();
    i++;
    if (strcmp(a, "--export") == 0) c.export_name = v;
    else if (strcmp(a, "--server") == 0) {
      if (c.nservers == MAX_SERVERS) die(1, "at most %d --server", MAX_SERVERS);
      if (parse_hostport(v, &c.servers[c.nservers]) < 0) die(1, "--server takes HOST:PORT, not \"%s\"", v);
      c.nservers++;
    } else if (strcmp(a, "--nodes-url") == 0) {
      const char *slash = strchr(v, '/');
      char hp[300];
      if (!slash || (size_t)(slash - v) >= sizeof hp || strlen(slash) >= sizeof c.nodes_path) die(1, "--nodes-url takes HOST:PORT/PATH");
      memcpy(hp, v, (size_t)(slash - v));
      hp[slash - v] = 0;
      if (parse_hostport(hp, &c.nodes_api) < 0) die(1, "--nodes-url takes HOST:PORT/PATH");
      strcpy(c.nodes_path, slash);
      c.have_nodes_url = 1;
    } else if (strcmp(a, "--device") == 0) c.device = (int)parse_uint(v, "--device", 0, 1 << 20);
    else if (strcmp(a, "--connections") == 0) c.connections = (int)parse_uint(v, "--connections", 1, MAX_CONNECTIONS);
    else if (strcmp(a, "--timeout") == 0) c.timeout_s = parse_uint(v, "--timeout", 1, 86400);
    else if (strcmp(a, "--io-timeout") == 0) c.io_timeout_s = parse_uint(v, "--io-timeout", 1, 3600);
    else if (strcmp(a, "--backend") == 0) {
      if (strlen(v) >= sizeof c.backend) die(1, "--backend is too long");
      strcpy(c.backend, v);
    } else usage();
  }
  if (!c.export_name || (c.nservers == 0 && !c.have_nodes_url)) usage();
  if (strlen(c.export_name) > MAX_NAME) die(1, "export name too long");
  if (c.nservers == 0) {
    refresh_servers(&c);
    if (c.nservers == 0) die(3, "no server for \"%s\": the nodes URL gave none", c.export_name);
  }
  *cfg = c;
}

static void on_stop_signals(void) {
  struct sigaction sa = { .sa_handler = on_signal };
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  struct sigaction hup = { .sa_handler = on_hup }; // no SA_RESTART: it wakes the supervisor's poll
  sigaction(SIGHUP, &hup, NULL);
  signal(SIGPIPE, SIG_IGN);
}

// The first line on stdout: the device and the server it uses; then stdout
// is closed so a caller reading it up to EOF is not held.
static void announce(int index, const struct server *s) {
  if (s == NULL) printf("/dev/nbd%d adopting\n", index);
  else if (strchr(s->host, ':') != NULL) printf("/dev/nbd%d [%s]:%s\n", index, s->host, s->port);
  else printf("/dev/nbd%d %s:%s\n", index, s->host, s->port);
  fflush(stdout);
  int devnull = open("/dev/null", O_WRONLY);
  if (devnull >= 0) { dup2(devnull, 1); close(devnull); }
}

static int cmd_connect(int argc, char **argv) {
  struct config c = { .device = -1, .connections = 1, .timeout_s = 60, .io_timeout_s = 10 };
  parse_options(&c, argc, argv);
  struct nl nl;
  nl_open(&nl);
  int fds[MAX_CONNECTIONS];
  struct export_info info;
  c.offer = c.connections;
  int i = connect_any(&c, 0, fds, &info, 0);
  if (i == HS_REFUSED) die(5, "every server refused export \"%s\" (see above)", c.export_name);
  if (i < 0) die(3, "no server for \"%s\" could be reached (see above)", c.export_name);
  c.current = i;
  int event_fd = event_socket(&nl);
  int index = -1;
  int err = device_connect(&nl, &c, fds, &info, &index);
  close_all(fds, c.offer);
  if (err == -EBUSY) die(4, "/dev/nbd%d is in use: pick another --device, or leave it out", c.device);
  if (err < 0) die(4, "the kernel refused to connect the device: %s", strerror(-err));
  if (index < 0) die(4, "the kernel did not say which device it connected");

  on_stop_signals();
  LOG("nbd%d: connected to %s:%s, export \"%s\", %llu bytes, %d connection(s), timeout %us",
      index, c.servers[i].host, c.servers[i].port, c.export_name, (unsigned long long)info.size, c.connections, c.timeout_s);
  announce(index, &c.servers[i]);
  return supervise(&nl, &c, index, event_fd);
}

// Takes over a device whose agent died: the kernel may hold dead sockets
// whose LINK_DEAD nobody heard, so the new agent first reconnects once (the
// kernel takes the new sockets only in place of dead ones; with none dead it
// takes none and the probe costs one handshake), then supervises as usual.
static int cmd_adopt(int argc, char **argv) {
  if (argc < 1) usage();
  int index = (int)parse_uint(argv[0], "the device number", 0, 1 << 20);
  struct config c = { .device = index, .connections = 1, .timeout_s = 60, .io_timeout_s = 10 };
  parse_options(&c, argc - 1, argv + 1);
  struct nl nl;
  nl_open(&nl);
  struct status_walk w;
  if (device_status(&nl, index, &w) < 0 || !w.found || !w.connected) die(4, "/dev/nbd%d is not connected: nothing to adopt (attach it with pxd-attach connect)", index);
  int event_fd = event_socket(&nl);
  on_stop_signals();
  c.current = c.nservers - 1; // the probe starts with the first server
  LOG("nbd%d: adopting the device, export \"%s\"", index, c.export_name);
  // Announced before the probe: a caller that gives up waiting must not be
  // left guessing whether the device is looked after.
  announce(index, NULL);
  if (failover(&nl, &c, index, 1, c.connections) < 0) return 0;
  return supervise(&nl, &c, index, event_fd);
}

int main(int argc, char **argv) {
  if (argc < 2) usage();
  if (strcmp(argv[1], "connect") == 0) return cmd_connect(argc - 2, argv + 2);
  if (strcmp(argv[1], "adopt") == 0) return cmd_adopt(argc - 2, argv + 2);
  if (strcmp(argv[1], "disconnect") == 0) {
    if (argc != 3) usage();
    int index = (int)parse_uint(argv[2], "the device number", 0, 1 << 20);
    struct nl nl;
    nl_open(&nl);
    int err = device_disconnect(&nl, index);
    if (err < 0) die(4, "cannot disconnect /dev/nbd%d: %s", index, strerror(-err));
    return 0;
  }
  if (strcmp(argv[1], "status") == 0) {
    if (argc > 3) usage();
    int index = argc == 3 ? (int)parse_uint(argv[2], "the device number", 0, 1 << 20) : -1;
    struct nl nl;
    nl_open(&nl);
    struct status_walk w = { .print = 1 };
    int err = device_status(&nl, index, &w);
    if (err < 0) die(4, "status: %s", strerror(-err));
    return 0;
  }
  usage();
  return 1;
}
