/* init's own set-up, as the Python stages do it (sandbox/mounts.py, sandbox/namespaces.py,
 * sandbox/landlock.py, sandbox.launch._find_program). Each returns 0 or an errno, with the index of
 * what failed in ``*item`` where there is more than one thing to do. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "setup.h"

/* The kernel's layouts (older system headers lack the network rule). */
#define RULE_PATH_BENEATH 1
#define RULE_NET_PORT 2
struct path_beneath_attr { uint64_t allowed_access; int32_t parent_fd; } __attribute__((packed));
struct net_port_attr { uint64_t allowed_access, port; };

/* One step of the mount stage: 0, or -1 with errno set. Made as sandbox.mounts._MAKE makes them. */
static int apply_step(const struct init_mount *m)
{
    int fd;
    switch (m->kind) {
    case MOUNT: return mount(m->source, m->target, m->fstype, (unsigned long)m->flags, m->data);
    case MAKE_DIR: return mkdir(m->target, 0755);
    case MAKE_FILE:
        if ((fd = open(m->target, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644)) < 0)
            return -1;
        return close(fd);
    case MAKE_SYMLINK: return symlink(m->source, m->target);
    }
    errno = EINVAL;
    return -1;
}

int apply_mounts(const struct init_plan *plan, int *item)
{
    for (int i = 0; i < plan->mount_count; i++) {
        *item = i;
        if (apply_step(&plan->mounts[i]) < 0)
            return errno;
    }
    return 0;
}

int set_hostname(const struct init_plan *plan)
{
    return plan->hostname && sethostname(plan->hostname, strlen(plan->hostname)) < 0 ? errno : 0;
}

int bring_up_loopback(const struct init_plan *plan)
{
    if (!plan->loopback)
        return 0;
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), err = 0;
    if (sock < 0)
        return errno;
    struct ifreq req;
    memset(&req, 0, sizeof(req));
    strcpy(req.ifr_name, "lo");
    if (ioctl(sock, SIOCGIFFLAGS, &req) < 0)
        err = errno;
    req.ifr_flags |= IFF_UP;
    if (!err && ioctl(sock, SIOCSIFFLAGS, &req) < 0)
        err = errno;
    close(sock);
    return err;
}

/* A path that is gone (another mount view) is ruled by its nearest existing parent. */
static int add_path_rule(int ruleset, const struct init_plan *plan, const struct path_rule *rule)
{
    char *path = strdup(rule->path);
    if (!path)
        return ENOMEM;
    int fd, err = 0;
    while ((fd = open(path, O_PATH | O_CLOEXEC)) < 0) {
        char *slash = strrchr(path, '/');
        if ((errno != ENOENT && errno != ENOTDIR) || !slash || !strcmp(path, "/")) {
            err = errno;
            break;
        }
        slash[slash == path] = '\0';  /* "/a" -> "/", "/a/b" -> "/a" */
    }
    free(path);
    if (err)
        return err;
    struct stat st;
    struct path_beneath_attr attr = {.allowed_access = rule->rights & plan->fs_handled, .parent_fd = fd};
    if (fstat(fd, &st) < 0)
        err = errno;
    else if (!S_ISDIR(st.st_mode))
        attr.allowed_access &= plan->file_rights;
    if (!err && syscall(SYS_landlock_add_rule, ruleset, RULE_PATH_BENEATH, &attr, 0) < 0)
        err = errno;
    close(fd);
    return err;
}

int build_ruleset(const struct init_plan *plan, int *ruleset)
{
    *ruleset = -1;
    if (!plan->has_ruleset)
        return 0;
    uint64_t attr[3] = {plan->fs_handled, plan->net_handled, plan->scoped};
    if (plan->attr_size > sizeof(attr))
        return EINVAL;
    int fd = (int)syscall(SYS_landlock_create_ruleset, attr, (size_t)plan->attr_size, 0);
    if (fd < 0)
        return errno;
    int err = 0;
    for (int i = 0; !err && i < plan->path_rule_count; i++)
        err = add_path_rule(fd, plan, &plan->path_rules[i]);
    for (int i = 0; !err && i < plan->port_rule_count; i++) {
        struct net_port_attr attr = {.allowed_access = plan->port_rules[i].rights & plan->net_handled,
                                              .port = plan->port_rules[i].port};
        if (syscall(SYS_landlock_add_rule, fd, RULE_NET_PORT, &attr, 0) < 0)
            err = errno;
    }
    if (err) {
        close(fd);
        return err;
    }
    *ruleset = fd;
    return 0;
}

/* os.path.join(head, tail) */
static char *join(const char *head, const char *tail)
{
    if (tail[0] == '/' || !head[0])
        return strdup(tail);
    size_t len = strlen(head);
    char *out = malloc(len + strlen(tail) + 2);
    if (out)
        strcpy(stpcpy(stpcpy(out, head), head[len - 1] == '/' ? "" : "/"), tail);
    return out;
}

static int is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* The PATH search without trying each candidate with execve (each attempt would be a decision);
 * relative candidates are looked up in cwd. A file found but not executable is returned if nothing
 * better is: execve reports EACCES, as a shell would. NULL with errno ENOENT (or ENOMEM). */
char *find_program(const char *name, const char *search, const char *cwd)
{
    if (strchr(name, '/'))
        return strdup(name);
    char *denied = NULL, *dirs = strdup(search), *rest = dirs, *dir;
    if (!dirs)
        return NULL;
    while ((dir = strsep(&rest, ":"))) {
        char *candidate = join(*dir ? dir : ".", name);
        char *seen_as = candidate && cwd ? join(cwd, candidate) : candidate;
        if (!candidate || !seen_as) {
            free(candidate);
            free(denied);
            free(dirs);
            errno = ENOMEM;
            return NULL;
        }
        int found = is_file(seen_as), runnable = found && access(seen_as, X_OK) == 0;
        if (seen_as != candidate)
            free(seen_as);
        if (runnable) {
            free(denied);
            free(dirs);
            return candidate;
        }
        if (found && !denied)
            denied = candidate;
        else
            free(candidate);
    }
    free(dirs);
    errno = ENOENT;
    return denied;
}
