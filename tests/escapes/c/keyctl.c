/* keyctl: reach the kernel keyrings (shared with the host user) with keyctl, add_key and
 * request_key. Prints "NAME=ok" or "NAME=errno:N"; request_key answers ENOKEY natively when
 * no such key exists, which still shows the keyring was reachable. */
#include <errno.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

#define KEYCTL_GET_KEYRING_ID 0
#define KEY_SPEC_PROCESS_KEYRING -2
#define KEY_SPEC_USER_KEYRING -4

static void report(const char *name, long got) {
    if (got < 0) printf("%s=errno:%d\n", name, errno); else printf("%s=ok\n", name);
}

int main(void) {
    report("keyctl", syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING, 1));
    report("add_key", syscall(SYS_add_key, "user", "escape-probe", "x", 1, KEY_SPEC_PROCESS_KEYRING));
    report("request_key", syscall(SYS_request_key, "user", "escape-probe-missing", NULL, 0));
    return 0;
}
