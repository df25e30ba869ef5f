/* Sets each socket option that would redirect or re-source a decided packet on an internet
 * socket, and prints NAME=<with a real value> <with an unreadable value>. "ok errno:14" says the
 * kernel took the option and read its value; "errno:1 errno:1" says it was refused before the
 * value was read (the seccomp filter). */
#define _GNU_SOURCE  /* struct in6_pktinfo */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define UNREADABLE ((const void *)1)

static void report(const char *name, int set, int fd, int level, int optname) {
    int saved = errno;
    int fault = setsockopt(fd, level, optname, UNREADABLE, sizeof(int));
    printf("%s=", name);
    if (set == 0) printf("ok "); else printf("errno:%d ", saved);
    if (fault == 0) printf("ok\n"); else printf("errno:%d\n", errno);
}

#define TRY(name, fd, level, optname, value, length) \
    report(name, setsockopt(fd, level, optname, value, length), fd, level, optname)

/* A type 4 (segment routing) header: final destination ::1, first hop ::1 too; on loopback the
 * kernel only has to accept it. */
static size_t segment_routing_header(unsigned char *out) {
    memset(out, 0, 40);
    out[1] = 4;  /* hdrlen: 2 segments of 16 bytes, in 8-byte units */
    out[2] = 4;  /* routing type: segment routing */
    out[3] = 1;  /* segments left */
    out[4] = 1;  /* last entry */
    inet_pton(AF_INET6, "::1", out + 8);
    inet_pton(AF_INET6, "::1", out + 24);
    return 40;
}

int main(void) {
    int one = 1, loopback_index = 1, mark = 1;
    int loopback_index_be = htonl(1);  /* IP(V6)_UNICAST_IF take network byte order */
    int udp4 = socket(AF_INET, SOCK_DGRAM, 0), udp6 = socket(AF_INET6, SOCK_DGRAM, 0);
    int tcp4 = socket(AF_INET, SOCK_STREAM, 0);
    /* a socket each: the kernel refuses an interface that contradicts an earlier binding */
    int bound4 = socket(AF_INET, SOCK_DGRAM, 0), bound6 = socket(AF_INET6, SOCK_DGRAM, 0);
    int unicast4 = socket(AF_INET, SOCK_DGRAM, 0), unicast6 = socket(AF_INET6, SOCK_DGRAM, 0);
    if (udp4 < 0 || udp6 < 0 || tcp4 < 0 || bound4 < 0 || bound6 < 0 || unicast4 < 0 || unicast6 < 0) {
        perror("socket");
        return 2;
    }

    unsigned char lsrr[8] = {0x83, 7, 4, 127, 0, 0, 77, 0};  /* loose source route via 127.0.0.77 */
    TRY("IP_OPTIONS", udp4, SOL_IP, IP_OPTIONS, lsrr, sizeof lsrr);
    unsigned char srh[40];
    size_t srh_length = segment_routing_header(srh);
    TRY("IPV6_RTHDR", udp6, SOL_IPV6, IPV6_RTHDR, srh, srh_length);
    TRY("IPV6_2292RTHDR", udp6, SOL_IPV6, IPV6_2292RTHDR, srh, srh_length);
    /* RFC 2292 sticky options: a control message buffer, which may hold a routing header of
     * type 2 on kernels with Mobile IPv6; an empty one clears them and is taken everywhere. */
    TRY("IPV6_2292PKTOPTIONS", udp6, SOL_IPV6, IPV6_2292PKTOPTIONS, "", 0);

    TRY("SO_BINDTODEVICE", bound4, SOL_SOCKET, SO_BINDTODEVICE, "lo", 3);
    TRY("SO_BINDTOIFINDEX", bound6, SOL_SOCKET, SO_BINDTOIFINDEX, &loopback_index, sizeof(int));
    TRY("SO_MARK", udp4, SOL_SOCKET, SO_MARK, &mark, sizeof(int));
    TRY("IP_UNICAST_IF", unicast4, SOL_IP, IP_UNICAST_IF, &loopback_index_be, sizeof(int));
    TRY("IPV6_UNICAST_IF", unicast6, SOL_IPV6, IPV6_UNICAST_IF, &loopback_index_be, sizeof(int));
    int sticky6 = socket(AF_INET6, SOCK_DGRAM, 0), multicast4 = socket(AF_INET, SOCK_DGRAM, 0);
    int multicast6 = socket(AF_INET6, SOCK_DGRAM, 0);
    struct in6_pktinfo sticky = {.ipi6_addr = IN6ADDR_ANY_INIT, .ipi6_ifindex = 1};  /* every later send via lo */
    TRY("IPV6_PKTINFO", sticky6, SOL_IPV6, IPV6_PKTINFO, &sticky, sizeof sticky);
    struct in_addr loopback4 = {.s_addr = htonl(INADDR_LOOPBACK)};
    TRY("IP_MULTICAST_IF", multicast4, SOL_IP, IP_MULTICAST_IF, &loopback4, sizeof loopback4);
    TRY("IPV6_MULTICAST_IF", multicast6, SOL_IPV6, IPV6_MULTICAST_IF, &loopback_index, sizeof(int));

    TRY("IP_TRANSPARENT", udp4, SOL_IP, IP_TRANSPARENT, &one, sizeof(int));
    TRY("IP_FREEBIND", udp4, SOL_IP, IP_FREEBIND, &one, sizeof(int));
    TRY("IPV6_TRANSPARENT", udp6, SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof(int));
    TRY("IPV6_FREEBIND", udp6, SOL_IPV6, IPV6_FREEBIND, &one, sizeof(int));

    /* Repair mode: queues and sequence numbers set by hand, then a connect that sends nothing
     * (it only establishes), so the options and window of an established connection can be set. */
    int receive_queue = TCP_RECV_QUEUE, sequence = 1000;
    TRY("TCP_REPAIR", tcp4, SOL_TCP, TCP_REPAIR, &one, sizeof(int));
    TRY("TCP_REPAIR_QUEUE", tcp4, SOL_TCP, TCP_REPAIR_QUEUE, &receive_queue, sizeof(int));
    TRY("TCP_QUEUE_SEQ", tcp4, SOL_TCP, TCP_QUEUE_SEQ, &sequence, sizeof(int));
    struct sockaddr_in peer = {.sin_family = AF_INET, .sin_port = htons(9), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    connect(tcp4, (struct sockaddr *)&peer, sizeof peer);
    struct tcp_repair_opt segment_size = {.opt_code = TCPOPT_MAXSEG, .opt_val = 1400};
    TRY("TCP_REPAIR_OPTIONS", tcp4, SOL_TCP, TCP_REPAIR_OPTIONS, &segment_size, sizeof segment_size);
    struct tcp_repair_window window = {0};
    socklen_t window_length = sizeof window;
    getsockopt(tcp4, SOL_TCP, TCP_REPAIR_WINDOW, &window, &window_length);  /* set back what it is */
    TRY("TCP_REPAIR_WINDOW", tcp4, SOL_TCP, TCP_REPAIR_WINDOW, &window, sizeof window);
    return 0;
}
