/* socket_families: open the sockets that craft packets or talk to the host beneath the network
 * stack: AF_PACKET, raw IPv4, ICMP ping, AF_VSOCK (hypervisor channel), netlink audit and
 * netfilter; then dump the interfaces visible over NETLINK_ROUTE. Prints "NAME=ok|errno:N" per
 * socket and "links=N" (natively the host's interfaces; in the sandbox only loopback). */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_ether.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif

static int count_links(void) {
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0) return -errno;
    struct { struct nlmsghdr h; struct ifinfomsg i; } req;
    memset(&req, 0, sizeof req);
    req.h.nlmsg_len = sizeof req;
    req.h.nlmsg_type = RTM_GETLINK;
    req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    if (send(fd, &req, sizeof req, 0) < 0) return -errno;
    int links = 0;
    char buf[32768];
    for (;;) {
        ssize_t got = recv(fd, buf, sizeof buf, 0);
        if (got <= 0) return -errno;
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, got); h = NLMSG_NEXT(h, got)) {
            if (h->nlmsg_type == NLMSG_DONE) return links;
            if (h->nlmsg_type == RTM_NEWLINK) links++;
        }
    }
}

int main(void) {
    struct { const char *name; int domain, type, protocol; } tries[] = {
        {"packet", AF_PACKET, SOCK_RAW, htons(ETH_P_ALL)},
        {"raw_ipv4", AF_INET, SOCK_RAW, IPPROTO_RAW},
        {"icmp_ping", AF_INET, SOCK_DGRAM, IPPROTO_ICMP},
        {"vsock", AF_VSOCK, SOCK_STREAM, 0},
        {"netlink_audit", AF_NETLINK, SOCK_RAW, NETLINK_AUDIT},
        {"netlink_netfilter", AF_NETLINK, SOCK_RAW, NETLINK_NETFILTER},
    };
    for (unsigned i = 0; i < sizeof tries / sizeof tries[0]; i++) {
        int fd = socket(tries[i].domain, tries[i].type, tries[i].protocol);
        if (fd < 0) printf("%s=errno:%d\n", tries[i].name, errno); else printf("%s=ok\n", tries[i].name);
        if (fd >= 0) close(fd);
    }
    printf("links=%d\n", count_links());
    return 0;
}
