/* The sandbox's init, pid 1 of its pid namespace: the init rows of sandbox.launch.STAGES that the
 * clone child left (await_release to fork_agent), then it forwards signals to the agent, reaps
 * orphans and exits with the agent's status, as sandbox.launch._wait_and_forward does. Started by
 * sandbox/spawn_c/init_start.c with the launcher's socket, its plan and itself at fixed fds. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "setup.h"

#define EXIT_SETUP 125
#define RELEASE "go"

#define STAGE_NAME(id, name) name,
static const char *const agent_stage_names[STAGE_COUNT] = {SPAWN_STAGES(STAGE_NAME)};
static const char *const init_stage_names[INIT_STAGE_COUNT] = {INIT_STAGES(STAGE_NAME)};
#undef STAGE_NAME

/* Tells the launcher which stage failed, with the errno, the index of the item that failed (-1: the
 * stage as a whole) and any text; the launcher writes the message (sandbox/init_spawn.py). */
static __attribute__((noreturn)) void fail(const char *stage, int err, int item, const char *text)
{
    char msg[1024];
    int len = snprintf(msg, sizeof(msg), "initfail%c%s%c%d%c%d%c%s", 0, stage, 0, err, 0, item, 0, text ? text : "");
    if (len > (int)sizeof(msg) - 1)
        len = (int)sizeof(msg) - 1;
    send(INIT_SOCK_FD, msg, (size_t)len, MSG_NOSIGNAL);
    _exit(EXIT_SETUP);
}

static void write_all(int fd, const char *text, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, text, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;  /* the agent's stderr is closed or gone: there is nowhere to say it */
        text += n;
        len -= (size_t)n;
    }
}

/* Puts the late command's stdio at 0, 1 and 2 (through high numbers first: a received descriptor
 * may already sit at one of them) and closes the rest; the late plan's fd is returned. */
static int take_late_fds(const int *fds)
{
    int moved[LATE_FDS];
    for (int i = 0; i < LATE_FDS; i++) {
        moved[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 10);
        if (moved[i] < 0)
            _exit(EXIT_SETUP);
        close(fds[i]);
    }
    for (int i = 1; i < LATE_FDS; i++) {
        if (dup2(moved[i], i - 1) < 0)
            _exit(EXIT_SETUP);
        close(moved[i]);
    }
    return moved[0];
}

/* A dead launcher's end of the socket reads as EOF (getppid() is 0 across a pid namespace). A plan
 * that waits for its command gets it here: the late plan and the agent's stdio, LATE_FDS of them. */
static const char *await_release(struct init_plan *plan)
{
    char buf[16];
    union { struct cmsghdr align; char space[CMSG_SPACE(sizeof(int) * LATE_FDS)]; } control;
    struct iovec iov = {buf, sizeof(buf)};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space,
                         .msg_controllen = sizeof(control.space)};
    ssize_t n;
    do
        n = recvmsg(INIT_SOCK_FD, &msg, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    struct cmsghdr *cm = n < 0 ? NULL : CMSG_FIRSTHDR(&msg);
    int got = 0, fds[LATE_FDS];
    if (cm && cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
        got = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    if (got > 0)
        memcpy(fds, CMSG_DATA(cm), sizeof(int) * (size_t)(got < LATE_FDS ? got : LATE_FDS));
    int want = plan->late ? LATE_FDS : 0;
    if (n != (ssize_t)strlen(RELEASE) || memcmp(buf, RELEASE, strlen(RELEASE)) || got != want ||
        (msg.msg_flags & (MSG_CTRUNC | MSG_TRUNC)))
        _exit(EXIT_SETUP);  /* not the launcher's release: nothing of it is used */
    if (!want)
        return NULL;
    int late_plan = take_late_fds(fds);
    const char *why = read_late_plan(late_plan, plan);
    close(late_plan);
    return why;
}

static pid_t fork_agent(struct init_plan *plan)
{
    struct spawn_plan *agent = &plan->agent;
    int err = build_ruleset(plan, &agent->ruleset);
    if (err)
        fail("landlock", err, -1, "ruleset");
    char *path = NULL;
    if (!agent->skip_exec) {
        path = plan->search ? find_program(plan->argv[0], plan->search, agent->cwd) : strdup(plan->argv[0]);
        if (!path && errno != ENOENT)
            fail("fork_agent", errno, -1, "PATH search");
        if (!path) {  /* as the shell does: not found is 127, and init says so once the child is gone */
            static char message[4096];
            int len = snprintf(message, sizeof(message), "faramesh-sandbox: %s: %s\n", plan->argv[0], strerror(ENOENT));
            plan->no_exec_message = message;
            plan->no_exec_len = len < (int)sizeof(message) ? (size_t)len : sizeof(message) - 1;
            agent->skip_exec = 1;
            agent->exit_status = 127;
        }
    }
    agent->sock = INIT_SOCK_FD;
    agent->path = path;
    agent->argv = plan->argv;
    agent->envp = plan->envp;
    pid_t pid = start_agent(agent);
    if (pid < 0)
        fail("fork_agent", errno, -1, "clone");
    if (agent->ruleset >= 0)
        close(agent->ruleset);
    if (agent->failed_stage != -1) {
        if (agent->failed_stage < 0 || agent->failed_stage >= STAGE_COUNT)
            fail("fork_agent", 0, agent->failed_stage, "stage");
        fail(agent_stage_names[agent->failed_stage], agent->failed_errno, -1, NULL);
    }
    if (plan->no_exec_message)
        write_all(2, plan->no_exec_message, plan->no_exec_len);
    else if (agent->exec_errno) {
        char message[4096];
        int len = snprintf(message, sizeof(message), "faramesh-sandbox: %s: %s\n", plan->argv[0],
                           strerror(agent->exec_errno));
        write_all(2, message, len < (int)sizeof(message) ? (size_t)len : sizeof(message) - 1);
    }
    free(path);
    return pid;
}

static int exit_code(int status)
{
    return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
}

/* sandbox.launch.FORWARDED: the signals passed on to the agent. */
static void forwarded_signals(sigset_t *set)
{
    sigemptyset(set);
    for (const int *sig = (const int[]){SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGWINCH, 0}; *sig; sig++)
        sigaddset(set, *sig);
}

/* As sandbox.launch._new_session: out of the launcher's session and process group, so the agent's
 * kill(0, sig) reaches only the sandbox and no sandbox process has a controlling terminal. */
static int new_session(void)
{
    if (setsid() < 0)
        return errno;
    /* The agent runs under the default policy whatever real-time one the launcher had: with
     * SCHED_FIFO inherited it could starve the host (RLIMIT_RTPRIO 0 only stops raising it). */
    struct sched_param normal = {0};
    if (sched_getscheduler(0) != SCHED_OTHER && sched_setscheduler(0, SCHED_OTHER, &normal) < 0)
        return errno;
    sigset_t forwarded;
    forwarded_signals(&forwarded);
    static const struct timespec now = {0, 0};
    while (sigtimedwait(&forwarded, NULL, &now) > 0)
        ;  /* the terminal's, sent to the launcher's group before: the launcher forwards its own copy */
    return 0;
}

/* Forward signals sent to us to the agent, reap everything, exit with the agent's status. */
static __attribute__((noreturn)) void wait_and_forward(pid_t agent)
{
    sigset_t waited;
    forwarded_signals(&waited);
    sigaddset(&waited, SIGCHLD);
    for (;;) {
        siginfo_t info;
        int sig = sigwaitinfo(&waited, &info);
        if (sig < 0) {
            if (errno == EINTR)
                continue;
            _exit(EXIT_SETUP);
        }
        if (sig != SIGCHLD) {
            kill(agent, sig);  /* no terminal sends us any: each is the agent's only copy */
            continue;
        }
        for (;;) {  /* init reaps orphans too */
            int status;
            pid_t pid = waitpid(-1, &status, WNOHANG);
            if (pid <= 0)
                break;
            if (pid == agent)
                _exit(exit_code(status));
        }
    }
}

int main(void)
{
    static struct init_plan plan;
    sigset_t all;
    sigfillset(&all);
    /* Every signal stays blocked (the launcher starts us so already): waited for, never handled. */
    sigprocmask(SIG_BLOCK, &all, NULL);
    /* Again: the execve that started us clears it when it raised our capabilities (a launcher
     * whose permitted set was below its bounding set). A launcher already dead by now is seen by
     * await_release, as end-of-file. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
        fail(init_stage_names[INIT_DIE_WITH_LAUNCHER], errno, -1, NULL);
    signal(SIGCHLD, SIG_DFL);  /* an ignored SIGCHLD would reap the agent before we could */
    const char *why = read_plan(INIT_PLAN_FD, &plan);
    close(INIT_PLAN_FD);
    /* first, even for a bad plan: closing with "go" unread would reset the socket */
    const char *late_why = await_release(&plan);
    if (why || late_why)
        fail("clone_init", 0, -1, why ? why : late_why);
    int item = -1, err;
    if ((err = new_session()))
        fail(init_stage_names[INIT_NEW_SESSION], err, -1, NULL);
    if ((err = apply_mounts(&plan, &item)))
        fail(init_stage_names[INIT_MOUNTS], err, item, NULL);
    if ((err = set_hostname(&plan)))
        fail(init_stage_names[INIT_HOSTNAME], err, -1, NULL);
    if ((err = bring_up_loopback(&plan)))
        fail(init_stage_names[INIT_LOOPBACK], err, -1, NULL);
    pid_t agent = fork_agent(&plan);
    close(INIT_SOCK_FD);
    wait_and_forward(agent);
}
