/* A repeated connect() answered as sandbox/netops.py would, or left to Python.
 *
 * The address is read from the agent's memory once (exactly the addrlen bytes the kernel would
 * read), our duplicate of the agent's socket is taken with pidfd_getfd (the same open file
 * description), and the socket's domain, type and protocol plus the address bytes must match a
 * connect Python has decided. The call is then performed on the duplicate with the address
 * Python rebuilt from the decided values, and the agent gets its result; a decided denial gets
 * the refusal errno. Nothing is CONTINUEd, so rewriting the address after the read changes
 * nothing. Anything else (a first connect, an unreadable address, another family, a bad fd) is
 * returned to Python untouched, which answers it as before, errors included.
 *
 * A connect may wait for long (a TCP listener with a full backlog, a blocking socket, and
 * another agent thread may clear O_NONBLOCK at any moment, so no check of it holds; even a UDP
 * connect waits for the socket's lock, which an agent thread blocked in a send holds): it is
 * decided and recorded here, then handed to the receiving Python thread to perform
 * (FastPath.receive() returns it as a pending connect), so the supervisor's watchdog lets
 * another thread take over receiving when it stalls, as for any slow call. A pool of C
 * threads did the same at twice the cost (a cross-CPU wakeup per connect: docs/network.md).
 *
 * socket() of a TCP or UDP internet socket needs no decision: it is created here, in the
 * supervisor's network namespace, exactly as sandbox.netops._create_socket does, and injected
 * with ADDFD; any other type, flag or protocol (EINVAL, EPROTONOSUPPORT) goes to Python.
 */
#include "fastpath.h"

#include <netinet/in.h>
#include <sys/socket.h>

#ifndef PIDFD_THREAD
#define PIDFD_THREAD O_EXCL
#endif

/* connect() on our duplicate with the decided address, our duplicate closed, then the answer. */
void fp_answer_connect(int listener, uint64_t id, int sock, const unsigned char *target, uint32_t length) {
    int err = connect(sock, (const struct sockaddr *)target, length) == 0 ? 0 : errno;
    close(sock); /* the agent's own close() stays the last one, as in netops */
    struct seccomp_notif_resp resp = {.id = id, .val = 0, .error = -err, .flags = 0};
    ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp); /* ENOENT: the task is gone, nobody waits */
}

/* -- the table ------------------------------------------------------------------- */

static uint64_t connect_hash(int domain, int type, int protocol, const unsigned char *raw, uint32_t length) {
    return fp_hash((const char *)raw, length, ((uint32_t)domain << 24) ^ ((uint32_t)type << 16) ^ (uint32_t)protocol);
}

/* The slot holding this key, or the empty slot where it would go (caller holds table_lock). */
static ConnectSlot *find_connect(FastPath *self, int domain, int type, int protocol, const unsigned char *raw,
                                 uint32_t length, uint64_t hash) {
    for (uint32_t i = (uint32_t)hash & self->connect_mask;; i = (i + 1) & self->connect_mask) {
        ConnectSlot *slot = &self->connects[i];
        if (!slot->used || (slot->hash == hash && slot->domain == domain && slot->type == type &&
                            slot->protocol == protocol && slot->raw_length == length &&
                            memcmp(slot->raw, raw, length) == 0))
            return slot;
    }
}

int fp_connects_init(FastPath *self, unsigned int entries) {
    if (!entries)
        return 0;
    uint32_t size = 2;
    while (size < entries * 2)
        size <<= 1;
    self->connects = calloc(size, sizeof(ConnectSlot));
    if (!self->connects)
        return -1;
    self->connect_mask = size - 1, self->max_connects = entries;
    return 0;
}

void fp_connects_free(FastPath *self) {
    free(self->connects);
    self->connects = NULL;
}

int fp_remember_connect(FastPath *self, const ConnectSlot *learned, uint64_t generation) {
    int stored = 0;
    pthread_mutex_lock(&self->table_lock);
    if (self->connects && generation == self->names_generation) {
        uint64_t hash = connect_hash(learned->domain, learned->type, learned->protocol, learned->raw,
                                     learned->raw_length);
        ConnectSlot *slot = find_connect(self, learned->domain, learned->type, learned->protocol, learned->raw,
                                         learned->raw_length, hash);
        if (slot->used || self->connects_used < self->max_connects) {
            self->connects_used += !slot->used;
            *slot = *learned;
            slot->hash = hash, slot->used = 1;
            stored = 1;
        }
    }
    pthread_mutex_unlock(&self->table_lock);
    return stored;
}

/* The DNS names changed: every connect decided with the old ones is forgotten, and from now on
 * only those decided under the latest generation told are learned (changes may be told out of
 * order: the latest is the largest). */
void fp_forget_connects(FastPath *self, uint64_t generation) {
    pthread_mutex_lock(&self->table_lock);
    if (self->connects && self->connects_used)
        memset(self->connects, 0, ((size_t)self->connect_mask + 1) * sizeof(ConnectSlot));
    self->connects_used = 0;
    if (generation > self->names_generation)
        self->names_generation = generation;
    pthread_mutex_unlock(&self->table_lock);
}

/* -- one notification ---------------------------------------------------------------- */

static int socket_option(int sock, int name) {
    int value = -1;
    socklen_t length = sizeof value;
    return getsockopt(sock, SOL_SOCKET, name, &value, &length) == 0 ? value : -1;
}

/* The learned decision for this socket and address (copied out), or 0. */
static int lookup(FastPath *self, int sock, const unsigned char *raw, uint32_t length, ConnectSlot *out) {
    int domain = socket_option(sock, SO_DOMAIN), type = socket_option(sock, SO_TYPE);
    int protocol = socket_option(sock, SO_PROTOCOL);
    if ((domain != AF_INET && domain != AF_INET6) || (type != SOCK_STREAM && type != SOCK_DGRAM) || protocol < 0)
        return 0;
    uint64_t hash = connect_hash(domain, type, protocol, raw, length);
    pthread_mutex_lock(&self->table_lock);
    ConnectSlot *slot = find_connect(self, domain, type, protocol, raw, length, hash);
    int found = slot->used;
    if (found)
        *out = *slot;
    pthread_mutex_unlock(&self->table_lock);
    /* a DNS name it was decided with has expired: Python decides again */
    return found && (!out->expires_ns || fp_clock_ns(CLOCK_MONOTONIC) < out->expires_ns);
}

static int open_task(pid_t tid) {
    int pidfd = (int)syscall(SYS_pidfd_open, tid, PIDFD_THREAD);
    return pidfd >= 0 || errno != EINVAL ? pidfd : (int)syscall(SYS_pidfd_open, tid, 0);
}

int fp_connect(FastPath *self, const struct seccomp_notif *n, int64_t started, ConnectJob *pending) {
    if (n->data.arch != self->arch || n->data.nr != self->nr_connect || !self->connects_used || self->suspended)
        return MISS;
    int32_t length = (int32_t)n->data.args[2];
    unsigned char raw[SOCKADDR_LIMIT];
    sa_family_t family;
    /* Invalid lengths and unreadable addresses: Python fails them as the kernel would. */
    if (length < (int32_t)sizeof family || length > SOCKADDR_LIMIT || !n->data.args[1] ||
        fp_read_memory(n->pid, n->data.args[1], raw, (size_t)length) < 0)
        return MISS;
    memcpy(&family, raw, sizeof family);
    if (family != AF_INET && family != AF_INET6)
        return MISS;
    int pidfd = open_task(n->pid);
    if (pidfd < 0)
        return MISS;
    /* The address was read from, and the pidfd opened for, the task that trapped only if it
     * still waits: otherwise the number may name another task now. */
    if (ioctl(self->listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &n->id) != 0) {
        int gone = errno == ENOENT;
        close(pidfd);
        self->gone += gone;
        return gone ? ANSWERED : MISS; /* a task that is gone needs no answer */
    }
    int sock = (int)syscall(SYS_pidfd_getfd, pidfd, (int)n->data.args[0], 0);
    close(pidfd);
    if (sock < 0)
        return MISS; /* a bad fd: Python gives the agent the error */
    ConnectSlot known;
    if (!lookup(self, sock, raw, (uint32_t)length, &known) || (self->record && !fp_ring_has_room(self))) {
        close(sock);
        return MISS;
    }
    Hit hit = {known.entry, (int32_t)n->pid, n->data.nr, known.deny ? -known.refusal : 0,
               fp_clock_ns(CLOCK_REALTIME), fp_clock_ns(CLOCK_MONOTONIC) - started};
    /* On record before it takes effect: a permit nobody can account for is not granted. */
    if (self->record && !fp_queue_hit(self, hit)) {
        close(sock);
        self->ring_full++;
        fp_send_error(self->listener, n->id, known.refusal);
        return ANSWERED;
    }
    self->connect_hits++;
    if (known.deny) {
        close(sock);
        self->connect_denied++;
        fp_send_error(self->listener, n->id, known.refusal);
        return ANSWERED;
    }
    *pending = (ConnectJob){n->id, sock, known.target_length, {0}};
    memcpy(pending->target, known.target, known.target_length);
    self->connect_handed++;
    return PENDING;
}

/* -- socket() -------------------------------------------------------------------------- */

int fp_socket(FastPath *self, const struct seccomp_notif *n) {
    int domain = (int)n->data.args[0], requested = (int)n->data.args[1], protocol = (int)n->data.args[2];
    int kind = requested & 0xF;
    if (n->data.arch != self->arch || self->suspended || (domain != AF_INET && domain != AF_INET6) ||
        requested & ~(0xF | SOCK_NONBLOCK | SOCK_CLOEXEC))
        return MISS;
    if (!((kind == SOCK_STREAM && (protocol == 0 || protocol == IPPROTO_TCP)) ||
          (kind == SOCK_DGRAM && (protocol == 0 || protocol == IPPROTO_UDP))))
        return MISS;
    int sock = socket(domain, kind | (requested & SOCK_NONBLOCK) | SOCK_CLOEXEC, protocol);
    if (sock < 0)
        return MISS; /* e.g. EMFILE here: Python gives the agent the error */
    struct seccomp_notif_addfd addfd = {
        .id = n->id, .flags = SECCOMP_ADDFD_FLAG_SEND, .srcfd = (uint32_t)sock, .newfd = 0,
        .newfd_flags = requested & SOCK_CLOEXEC ? O_CLOEXEC : 0,
    };
    if (ioctl(self->listener, SECCOMP_IOCTL_NOTIF_ADDFD, &addfd) < 0 && errno != ENOENT)
        fp_send_error(self->listener, n->id, errno); /* e.g. EMFILE in the agent */
    close(sock);
    self->sockets++;
    return ANSWERED;
}
