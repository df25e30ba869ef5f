/* launcher/_client: hands one command to a running `faramesh-sandbox serve` and exits with its
 * status. Start-up cost is the point: no Python, libc only, one connect, one memfd, one sendmsg.
 *
 * Protocol (AF_UNIX SOCK_SEQPACKET, an abstract name of the host's network namespace, which no
 * sandbox's agent can reach or bind: launcher/serve_request.py):
 *   service -> client  "ready" once we are let in (until then the kernel refuses our descriptors);
 *   client -> service  "faramesh-run-1\0" with SCM_RIGHTS [request memfd, stdin, stdout, stderr];
 *                      the memfd, sealed and at offset 0, holds records: tag byte, LE u32 length,
 *                      payload: 'c' cwd\0, 'a' arg\0 (each), 'e' NAME=value\0 (each), 'z' (end).
 *   client -> service  "sig\0" + LE u32 signal number, for each forwarded signal.
 *   service -> client  "msg\0" + a line, printed on our stderr (why the service refused, ...);
 *   service -> client  "exit" + LE u32 status (0..255); the client exits with it. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "records.h"

#define EXIT_CLIENT 125
#define MAGIC "faramesh-run-1"  /* sent with its NUL */
#define USAGE "usage: %s [--socket NAME] [--] CMD [ARGS...]"
#define TEXT_MAX 4096
#define SO_PEERPIDFD_OPT 77  /* SO_PEERPIDFD, Linux 6.5 (older headers lack the name) */
#define READY (-2)  /* read_message: the service let us in */

/* Why the client gave up -> the hint its one line ends with. */
enum failure { BAD_USAGE, NO_CWD, NO_SERVICE, NOT_YOURS, LONG_PATH, NO_STATUS, NOT_UNDERSTOOD, SYSTEM };
static const char *const HINTS[] = {
    [BAD_USAGE] = "the usage is [--socket NAME] [--] CMD [ARGS...]",
    [NO_CWD] = "cd to a directory that exists",
    [NO_SERVICE] = "start one with `faramesh-sandbox serve --policy FILE`",
    [NOT_YOURS] = "pass --socket or set FARAMESH_SANDBOX_SOCKET to the name of a service you started",
    [LONG_PATH] = "give --socket or FARAMESH_SANDBOX_SOCKET a shorter name",
    [NO_STATUS] = "see the service's output",
    [NOT_UNDERSTOOD] = "see the service's output; the service and this client may be from different versions",
    [SYSTEM] = "this is a problem of the machine, not of the command",
};

/* Forwarded to the service, which signals the command; SIGTSTP keeps its default (stops us). */
static const int FORWARDED[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGWINCH};

static __attribute__((noreturn, format(printf, 2, 3))) void fail(enum failure why, const char *fmt, ...)
{
    char line[8192];
    int len = snprintf(line, sizeof(line), "faramesh-sandbox: ");
    va_list args;
    va_start(args, fmt);
    len += vsnprintf(line + len, sizeof(line) - (size_t)len, fmt, args);
    va_end(args);
    if (len > (int)sizeof(line) - 1)
        len = (int)sizeof(line) - 1;
    len += snprintf(line + len, sizeof(line) - (size_t)len, " — hint: %s\n", HINTS[why]);
    if (len > (int)sizeof(line) - 1) {  /* cut, but still one line */
        len = (int)sizeof(line) - 1;
        line[len - 1] = '\n';
    }
    write_all(2, line, (size_t)len);  /* a closed stderr leaves only the status to say it */
    _exit(EXIT_CLIENT);
}

/* ---- command line and socket name ---------------------------------------------------------- */

/* Returns the index of CMD in argv; sets *socket_name when --socket is given. */
static int parse_args(int argc, char **argv, const char **socket_name)
{
    int i = 1;
    while (i < argc) {
        const char *arg = argv[i];
        if (!strcmp(arg, "--")) {
            if (i + 1 >= argc)
                fail(BAD_USAGE, "no command after --");
            return i + 1;
        }
        if (!strcmp(arg, "--help")) {
            char text[512];
            int len = snprintf(text, sizeof(text), USAGE "\nRuns CMD in the sandbox of a running "
                               "`faramesh-sandbox serve` and exits with its status.\n", argv[0]);
            write_all(1, text, len < (int)sizeof(text) ? (size_t)len : sizeof(text) - 1);
            _exit(0);
        }
        if (!strcmp(arg, "--socket")) {
            if (i + 1 >= argc)
                fail(BAD_USAGE, "--socket needs a NAME");
            *socket_name = argv[i + 1];
            i += 2;
            continue;
        }
        if (arg[0] == '-')
            fail(BAD_USAGE, "unknown option %s (put -- before a command that starts with -)", arg);
        return i;
    }
    fail(BAD_USAGE, "no command given");
}

/* $FARAMESH_SANDBOX_SOCKET, else the name launcher/serve.py default_socket() gives this user. */
static void default_socket_name(char *out, size_t size)
{
    const char *socket_env = getenv("FARAMESH_SANDBOX_SOCKET");
    if (socket_env && *socket_env)
        snprintf(out, size, "%s", socket_env);
    else
        snprintf(out, size, "faramesh-sandbox-%u", (unsigned)geteuid());
}

/* ---- connecting ---------------------------------------------------------------------------- */

/* The peer is alive and in our pid namespace: its pidfd's NSpid names one pid (ours for it). A
 * process of our uid in a container sharing our network could otherwise take the name. */
static int peer_in_our_pid_namespace(int sock)
{
    int pidfd;
    socklen_t len = sizeof(pidfd);
    if (getsockopt(sock, SOL_SOCKET, SO_PEERPIDFD_OPT, &pidfd, &len) < 0)
        return 0;  /* a kernel without it (before 6.5): an unknown case is refused */
    char path[64], info[1024];
    snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", pidfd);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd < 0 ? -1 : read(fd, info, sizeof(info) - 1);
    if (fd >= 0)
        close(fd);
    close(pidfd);
    if (n <= 0)
        return 0;
    info[n] = 0;
    const char *pid = strstr(info, "\nPid:"), *nspid = strstr(info, "\nNSpid:");
    if (!pid || !nspid || atol(pid + 5) <= 0)
        return 0;
    int fields = 0;
    for (const char *at = nspid + 7; *at && *at != '\n'; at++)
        fields += (*at != ' ' && *at != '\t') && (at[-1] == ' ' || at[-1] == '\t' || at[-1] == ':');
    return fields == 1;
}

static int connect_service(const char *name)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    size_t len = strlen(name);
    if (len == 0 || len >= sizeof(addr.sun_path) || memchr(name, '/', len))
        fail(LONG_PATH, "the socket name \"%s\" is not an abstract name of 1 to %zu bytes without '/'", name,
             sizeof(addr.sun_path) - 1);
    memcpy(addr.sun_path + 1, name, len);  /* sun_path[0] stays NUL: the abstract namespace */
    socklen_t addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len);
    int sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (sock < 0)
        fail(SYSTEM, "socket(AF_UNIX, SOCK_SEQPACKET): %s", strerror(errno));
    int rc;
    do
        rc = connect(sock, (struct sockaddr *)&addr, addr_len);
    while (rc < 0 && errno == EINTR);
    if (rc < 0 && (errno == ENOENT || errno == ECONNREFUSED))
        fail(NO_SERVICE, "no service at @%s (%s)", name, strerror(errno));
    if (rc < 0)
        fail(NO_SERVICE, "cannot connect to @%s: %s", name, strerror(errno));
    /* Abstract names have no permissions: anyone could have bound ours first. Our stdin, stdout,
     * stderr and environment go only to a service of our own uid. */
    struct ucred peer;
    socklen_t peer_len = sizeof(peer);
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &peer, &peer_len) < 0)
        fail(SYSTEM, "getsockopt(SO_PEERCRED) on @%s: %s", name, strerror(errno));
    if (peer.uid != geteuid())
        fail(NOT_YOURS, "the service at @%s belongs to uid %u, not to you", name, (unsigned)peer.uid);
    if (!peer_in_our_pid_namespace(sock))
        fail(NOT_YOURS, "the process at @%s is in another pid namespace (a container), or gone", name);
    return sock;
}

/* ---- the request --------------------------------------------------------------------------- */

static int write_request(char **args, int count)
{
    /* Sealed so the service may read (or map) it knowing it cannot change under it. */
    int memfd = memfd_create("faramesh-run", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (memfd < 0)
        fail(SYSTEM, "memfd_create: %s", strerror(errno));
    struct records out = {.fd = memfd};
    char *cwd = getcwd(NULL, 0);
    if (!cwd)
        fail(NO_CWD, "cannot read the current directory: %s", strerror(errno));
    records_put(&out, 'c', cwd, strlen(cwd) + 1);
    free(cwd);
    for (int i = 0; i < count; i++)
        records_put(&out, 'a', args[i], strlen(args[i]) + 1);
    for (char **var = environ; *var; var++)
        records_put(&out, 'e', *var, strlen(*var) + 1);
    records_put(&out, 'z', "", 0);
    if (records_flush(&out) < 0)
        fail(SYSTEM, "writing the request to a memfd: %s", strerror(errno));
    fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL);
    lseek(memfd, 0, SEEK_SET);  /* the service shares this offset: it reads from the start */
    return memfd;
}

/* A closed 0/1/2 becomes /dev/null before anything else takes its number (a socket as stdin). */
static void fill_standard_fds(void)
{
    for (int fd = 0; fd <= 2; fd++)
        if (fcntl(fd, F_GETFD) < 0 && errno == EBADF && open("/dev/null", O_RDWR) != fd)
            fail(SYSTEM, "cannot open /dev/null for the closed fd %d: %s", fd, strerror(errno));
}

static void send_request(int sock, int memfd, const char *name)
{
    int fds[4] = {memfd, 0, 1, 2};
    union { struct cmsghdr align; char buf[CMSG_SPACE(sizeof(fds))]; } control;
    struct iovec iov = {.iov_base = MAGIC, .iov_len = sizeof(MAGIC)};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                         .msg_controllen = sizeof(control.buf)};
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(fds));
    memcpy(CMSG_DATA(cmsg), fds, sizeof(fds));
    ssize_t n;
    do
        n = sendmsg(sock, &msg, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) {
        close(memfd);
        return;  /* refused before our request came: its line and status may still wait to be read */
    }
    if (n < 0)
        fail(SYSTEM, "sendmsg to @%s: %s", name, strerror(errno));
    close(memfd);
}

/* ---- waiting for the status ---------------------------------------------------------------- */

static int block_forwarded_signals(void)
{
    sigset_t mask;
    sigemptyset(&mask);
    for (size_t i = 0; i < sizeof(FORWARDED) / sizeof(FORWARDED[0]); i++)
        sigaddset(&mask, FORWARDED[i]);
    /* Blocked before the run starts, so a Ctrl-C from then on is forwarded, never lost or fatal. */
    if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
        fail(SYSTEM, "sigprocmask: %s", strerror(errno));
    int sigfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sigfd < 0)
        fail(SYSTEM, "signalfd: %s", strerror(errno));
    return sigfd;
}

/* A send that fails (the service gone) is left to the socket's EOF to report. */
static void forward_signals(int sigfd, int sock)
{
    struct signalfd_siginfo info[8];
    ssize_t n;
    do
        n = read(sigfd, info, sizeof(info));
    while (n < 0 && errno == EINTR);
    for (ssize_t i = 0; i < n / (ssize_t)sizeof(info[0]); i++) {
        unsigned char msg[8] = {'s', 'i', 'g', 0};
        put_u32(msg + 4, info[i].ssi_signo);
        while (send(sock, msg, sizeof(msg), MSG_NOSIGNAL) < 0 && errno == EINTR)
            ;
    }
}

/* The status the service sent, -1 after a line it sent was printed, or READY; any other end of
 * the connection is a failure. */
static int read_message(int sock)
{
    unsigned char msg[4 + TEXT_MAX];
    ssize_t n;
    do  /* MSG_TRUNC: n is the message's real size, so an oversized one is never mistaken */
        n = recv(sock, msg, sizeof(msg), MSG_TRUNC);
    while (n < 0 && errno == EINTR);
    if (n < 0 && errno != ECONNRESET)
        fail(NO_STATUS, "the service ended the run without an exit status (%s)", strerror(errno));
    if (n <= 0)
        fail(NO_STATUS, "the service ended the run without an exit status");
    if (n > 4 && !memcmp(msg, "msg", 4)) {  /* "msg\0" and a line: longer ones arrive cut */
        size_t len = (size_t)(n < (ssize_t)sizeof(msg) ? n : (ssize_t)sizeof(msg)) - 4;
        write_all(2, msg + 4, len);
        write_all(2, "\n", 1);
        return -1;
    }
    if (n == 5 && !memcmp(msg, "ready", 5))
        return READY;
    uint32_t status = n == 8 ? get_u32(msg + 4) : 0;
    if (n != 8 || memcmp(msg, "exit", 4) || status > 255)
        fail(NOT_UNDERSTOOD, "the service sent a message this client does not understand");
    return (int)status;
}

/* Returns once ``until`` (READY, or a status: >= 0) comes; a status always ends the client.
 * ``sigfd`` < 0: no signals are forwarded yet (a client still queued dies of Ctrl-C as usual). */
static int wait_for(int sock, int sigfd, int until)
{
    struct pollfd watched[2] = {{.fd = sock, .events = POLLIN}, {.fd = sigfd, .events = POLLIN}};
    for (;;) {
        if (poll(watched, sigfd < 0 ? 1 : 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            fail(SYSTEM, "poll: %s", strerror(errno));
        }
        if (sigfd >= 0 && watched[1].revents)
            forward_signals(sigfd, sock);
        if (watched[0].revents) {  /* POLLIN, POLLHUP or POLLERR: recv says which */
            int got = read_message(sock);
            if (got >= 0)
                _exit(got);
            if (got == READY && until == READY)
                return READY;
            if (got == READY)
                fail(NOT_UNDERSTOOD, "the service sent a message this client does not understand");
        }
    }
}

int main(int argc, char **argv)
{
    fill_standard_fds();
    signal(SIGPIPE, SIG_IGN);
    const char *name = NULL;
    char default_name[256];
    int command = parse_args(argc, argv, &name);
    if (!name) {
        default_socket_name(default_name, sizeof(default_name));
        name = default_name;
    }
    int memfd = write_request(argv + command, argc - command);  /* first: a bad cwd never reaches the service */
    int sock = connect_service(name);
    wait_for(sock, -1, READY);
    int sigfd = block_forwarded_signals();
    send_request(sock, memfd, name);
    return wait_for(sock, sigfd, 0);
}
