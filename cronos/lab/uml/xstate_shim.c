/* LD_PRELOAD shim for Debian's User-Mode Linux 6.1 on CPUs with a large XSAVE area.
 *
 * UML saves and restores the FPU state of its host processes with
 * ptrace(PTRACE_GETREGSET/PTRACE_SETREGSET, pid, NT_X86_XSTATE, iov) using a
 * fixed buffer (struct _xstate).  GETREGSET truncates to iov_len, but the host
 * kernel's SETREGSET insists on the whole XSAVE area (fpu_user_cfg.max_size:
 * ~2.7 KiB with AVX-512, ~11 KiB with AMX) and fails with EFAULT otherwise, so
 * UML panics at boot with "ptrace set fp regs failed, errno = 14".
 *
 * This shim passes such a SETREGSET through a full-size buffer: it first reads
 * the task's current full XSTATE (GETREGSET into a buffer as large as CPUID
 * leaf 0xD says, at least 16 KiB; the kernel sets iov_len to the real size),
 * lays UML's bytes over its beginning, then SETREGSETs the full buffer.  The
 * components beyond UML's buffer keep the task's current values (UML guests
 * never see them).  Every other ptrace call goes to libc unchanged.
 *
 * Build: gcc -O2 -shared -fPIC -o xstate_shim.so xstate_shim.c -ldl
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/uio.h>

#ifndef NT_X86_XSTATE
#define NT_X86_XSTATE 0x202
#endif
#define MIN_BUF (16 * 1024)

typedef long (*ptrace_fn)(enum __ptrace_request, pid_t, void *, void *);

static ptrace_fn real_ptrace(void)
{
    static ptrace_fn fn;
    if (!fn)
        fn = (ptrace_fn)dlsym(RTLD_NEXT, "ptrace");
    return fn;
}

static size_t xsave_size(void)
{
    unsigned int a, b, c, d;
    size_t n = MIN_BUF;
    if (__get_cpuid_max(0, 0) >= 0xd) {
        __cpuid_count(0xd, 0, a, b, c, d);
        if (c > n)
            n = c; /* ECX: size for every feature the CPU supports */
    }
    return (n + 63) & ~(size_t)63;
}

static __thread unsigned char *buf;
static __thread size_t buf_len;

long ptrace(enum __ptrace_request request, ...)
{
    va_list ap;
    va_start(ap, request);
    pid_t pid = va_arg(ap, pid_t);
    void *addr = va_arg(ap, void *);
    void *data = va_arg(ap, void *);
    va_end(ap);

    if (request != PTRACE_SETREGSET || (unsigned long)addr != NT_X86_XSTATE || !data)
        return real_ptrace()(request, pid, addr, data);

    struct iovec *uml = data;
    if (!buf) {
        buf_len = xsave_size();
        buf = aligned_alloc(64, buf_len);
        if (!buf)
            return real_ptrace()(request, pid, addr, data);
    }
    struct iovec full = {buf, buf_len};
    if (real_ptrace()(PTRACE_GETREGSET, pid, addr, &full) < 0 || full.iov_len <= uml->iov_len)
        return real_ptrace()(request, pid, addr, data); /* nothing to widen */
    memcpy(buf, uml->iov_base, uml->iov_len);
    return real_ptrace()(PTRACE_SETREGSET, pid, addr, &full);
}
