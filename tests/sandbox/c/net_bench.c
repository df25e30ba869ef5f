/* Loopback network loops for bench/bench_net.py.
 *   net_bench connect PORT N      N x (socket, connect, close); prints socket and connect ns, one pair a line
 *   net_bench send PORT BYTES     one connection, BYTES written in 256 KiB writes; prints seconds
 *   net_bench sink PORT_FILE      listens on 127.0.0.1, writes the port to PORT_FILE, then drains
 *                                 connections until killed */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

int main(int argc, char **argv) {
    if (argc != 4 && !(argc == 3 && strcmp(argv[1], "sink") == 0)) {
        fprintf(stderr, "usage: %s connect PORT N | send PORT BYTES | sink PORT_FILE\n", argv[0]);
        return 2;
    }
    if (strcmp(argv[1], "sink") == 0) {
        int server = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        setsockopt(server, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in a = loopback(0);
        socklen_t len = sizeof a;
        if (bind(server, (struct sockaddr *)&a, sizeof a) || listen(server, 4096)) { perror("sink"); return 1; }
        getsockname(server, (struct sockaddr *)&a, &len);
        FILE *out = fopen(argv[2], "w");
        fprintf(out, "%d\n", ntohs(a.sin_port));
        fclose(out);
        static char buf[1 << 20];
        for (;;) {
            int conn = accept(server, NULL, NULL);
            if (conn < 0) continue;
            while (read(conn, buf, sizeof buf) > 0) {}
            close(conn);
        }
    }
    int port = atoi(argv[2]);
    struct sockaddr_in a = loopback(port);
    if (strcmp(argv[1], "connect") == 0) {
        long n = atol(argv[3]);
        for (long i = 0; i < n; i++) {
            double t0 = now();
            int fd = socket(AF_INET, SOCK_STREAM, 0);
            double t1 = now();
            if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a)) { perror("connect"); return 1; }
            double t2 = now();
            close(fd);
            printf("%.0f %.0f\n", (t1 - t0) * 1e9, (t2 - t1) * 1e9);
        }
        return 0;
    }
    long long total = atoll(argv[3]), sent = 0;
    static char chunk[256 * 1024];
    memset(chunk, 'x', sizeof chunk);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) { perror("connect"); return 1; }
    double t0 = now();
    while (sent < total) {
        ssize_t n = write(fd, chunk, sizeof chunk);
        if (n <= 0) { perror("write"); return 1; }
        sent += n;
    }
    shutdown(fd, SHUT_WR);
    char c;
    read(fd, &c, 1); /* the sink closes after draining everything */
    printf("%.6f\n", now() - t0);
    return 0;
}
