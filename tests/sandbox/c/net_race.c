/* A thread flips one sockaddr between an allowed and a denied port while the main thread
 * connects (UDP: connect + getpeername) or sends a datagram through it, TRIES times.
 * Prints "ok N refused M bypass B"; a bypass is a connect that landed on the denied port.
 * usage: net_race connect|sendto ALLOWED_PORT DENIED_PORT TRIES */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static struct sockaddr_in target;
static atomic_int stop;
static unsigned short allowed, denied;

static void *flipper(void *unused) {
    (void)unused;
    volatile unsigned short *port = &target.sin_port;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        *port = htons(denied);
        *port = htons(allowed);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s connect|sendto ALLOWED DENIED TRIES\n", argv[0]);
        return 2;
    }
    int sending = strcmp(argv[1], "sendto") == 0;
    allowed = (unsigned short)atoi(argv[2]);
    denied = (unsigned short)atoi(argv[3]);
    long tries = atol(argv[4]), ok = 0, refused = 0, bypass = 0;
    target.sin_family = AF_INET;
    target.sin_port = htons(allowed);
    target.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) { perror("socket"); return 3; }
    pthread_t thread;
    pthread_create(&thread, NULL, flipper, NULL);
    for (long i = 0; i < tries; i++) {
        int rc = sending ? (int)sendto(fd, "x", 1, 0, (struct sockaddr *)&target, sizeof target)
                         : connect(fd, (struct sockaddr *)&target, sizeof target);
        if (rc < 0) { refused++; continue; }
        ok++;
        if (!sending) {
            struct sockaddr_in peer;
            socklen_t len = sizeof peer;
            if (getpeername(fd, (struct sockaddr *)&peer, &len) == 0 && ntohs(peer.sin_port) == denied)
                bypass++;
        }
    }
    atomic_store(&stop, 1);
    pthread_join(thread, NULL);
    printf("ok %ld refused %ld bypass %ld\n", ok, refused, bypass);
    return 0;
}
