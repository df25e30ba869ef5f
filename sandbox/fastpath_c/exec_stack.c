/* What an exec was given, read from the new image's initial stack at PTRACE_EVENT_EXEC: argv as
 * /proc/PID/cmdline shows it and the AT_EXECFN string, with one register read and two or three
 * process_vm_readv calls instead of opening /proc/PID/cmdline and /proc/PID/auxv (exec_stop.c).
 *
 * At the exec stop no instruction of the new image has run and no other task shares its memory
 * (the exec gave it a fresh one), so the stack holds what the kernel laid out: argc, the argv
 * pointers, NULL, the envp pointers, NULL, the auxiliary vector; the argv strings are contiguous
 * from argv[0] (mm->arg_start, where /proc/PID/cmdline reads). Only a writer of /proc/PID/mem
 * (which needs ptrace access and a policy that lets it open the file for writing) could change it
 * meanwhile, as it could what /proc shows; the pointers are checked to name those strings, so what
 * is compared is what the program receives. */
#include "fastpath.h"

#include <elf.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#if defined(__aarch64__)
#include <asm/ptrace.h>
#endif

#define STACK_WORDS 512 /* argc, argv, envp and auxv of almost every exec; more goes to /proc */
#define AT_EXECFN_KEY 31

#if defined(__x86_64__)
typedef struct user_regs_struct Registers;
#define STACK_POINTER(registers) ((registers).rsp)
#elif defined(__aarch64__)
typedef struct user_pt_regs Registers;
#define STACK_POINTER(registers) ((registers).sp)
#endif

static int stack_pointer(pid_t pid, uint64_t *sp) {
#ifdef STACK_POINTER
    Registers regs;
    struct iovec io = {&regs, sizeof regs};
    if (ptrace(PTRACE_GETREGSET, pid, (void *)(uintptr_t)NT_PRSTATUS, &io) != 0)
        return -1;
    if (io.iov_len != sizeof regs)
        return 1; /* not a native image (a 32-bit one has other registers): /proc says */
    *sp = STACK_POINTER(regs);
    return 0;
#else
    (void)pid, (void)sp;
    return 1;
#endif
}

/* argv (at most limit bytes: more means longer than that) into argv and the AT_EXECFN string into
 * execfn (PATH_LIMIT): 0; 1 when the stack does not fit the one read (the caller reads /proc);
 * -1 when it cannot be read or is not as the kernel lays it out (errno set). */
int fp_initial_stack(pid_t pid, char *argv, size_t limit, ssize_t *argv_length, char *execfn,
                     ssize_t *execfn_length) {
    uint64_t sp, words[STACK_WORDS];
    int found = stack_pointer(pid, &sp);
    if (found != 0)
        return found;
    struct iovec local = {words, sizeof words}, remote = {(void *)(uintptr_t)sp, sizeof words};
    ssize_t got = process_vm_readv(pid, &local, 1, &remote, 1, 0); /* may end at the stack's top */
    if (got < 16)
        return got < 0 ? -1 : (errno = EFAULT, -1);
    size_t count = (size_t)got / 8, argc = (size_t)words[0], at = argc + 2;
    if (argc == 0 || argc > ARGV_LIMIT || at > count)
        return 1; /* /proc says what it is (it cannot be the decided argv) */
    if (words[argc + 1] != 0)
        return errno = EINVAL, -1;
    while (at < count && words[at]) /* the environment */
        at++;
    uint64_t execfn_at = 0;
    for (at++; at + 1 < count && words[at]; at += 2)
        if (words[at] == AT_EXECFN_KEY)
            execfn_at = words[at + 1];
    if (at + 1 >= count)
        return 1; /* the vector's end is beyond this read */
    if (!execfn_at)
        return errno = EINVAL, -1;
    struct iovec text = {argv, limit}, from = {(void *)(uintptr_t)words[1], limit};
    ssize_t length = process_vm_readv(pid, &text, 1, &from, 1, 0);
    if (length <= 0)
        return errno = EFAULT, -1;
    /* The argc-th NUL ends argv; each pointer must name the string that starts there. */
    size_t strings = 0, start = 0, end = (size_t)length;
    for (size_t i = 0; i < (size_t)length && strings < argc; i++) {
        if (argv[i])
            continue;
        if (words[1 + strings] != words[1] + start)
            return errno = EINVAL, -1;
        start = i + 1;
        if (++strings == argc)
            end = i + 1;
    }
    if (strings < argc && (size_t)length < limit)
        return errno = EFAULT, -1; /* the strings end beyond what could be read */
    *argv_length = (ssize_t)end; /* argc strings not all within limit: longer than that */
    *execfn_length = fp_read_string(pid, execfn_at, execfn, PATH_LIMIT);
    return *execfn_length < 0 ? (errno = EFAULT, -1) : 0;
}
