/*
 * Converted tensors filled on first touch (see hf_lazy.h): userfaultfd in MISSING mode on
 * private anonymous regions, one fault thread per model that converts the rows a faulting page
 * holds into a scratch buffer (sized at start, so the thread never allocates) and copies the
 * page in with UFFDIO_COPY. Pages the loader drops (MADV_DONTNEED after copying a column slice)
 * fault again and are converted again: same bytes.
 */
#include "model/hf_lazy.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common/error.h"

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

struct spk_hf_lazyset {
    int lazy, fd, stop[2], running;
    size_t page;
    spk_hf_lazy **z; /* sorted by base once started */
    size_t n, cap;
    uint8_t *scratch, *pagebuf;
    size_t scratch_size;
    pthread_t thread;
};

static int uffd_open(void)
{
    const char *e = getenv("SPK_HF_EAGER");
    if (e && !strcmp(e, "1"))
        return -1;
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) /* unprivileged (vm.unprivileged_userfaultfd = 0): faults from user mode only */
        fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    if (fd < 0)
        return -1;
    struct uffdio_api api = {.api = UFFD_API, .features = 0};
    if (ioctl(fd, UFFDIO_API, &api) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

spk_hf_lazyset *spk_hf_lazy_new(void)
{
    spk_hf_lazyset *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->page = (size_t)sysconf(_SC_PAGESIZE);
    s->stop[0] = s->stop[1] = -1;
    s->fd = uffd_open();
    s->lazy = s->fd >= 0;
    return s;
}

int spk_hf_lazy_is_lazy(const spk_hf_lazyset *s) { return s && s->lazy; }

/* Drop the whole pages inside z's source (file-backed: re-read on demand), so that a converted
 * tensor does not keep both copies resident. */
static void drop_source(const spk_hf_lazyset *s, const spk_hf_lazy *z)
{
    uintptr_t a = (uintptr_t)z->src, e = a + z->src_len;
    a = (a + s->page - 1) & ~(uintptr_t)(s->page - 1);
    e &= ~(uintptr_t)(s->page - 1);
    if (e > a)
        madvise((void *)a, e - a, MADV_DONTNEED);
}

spk_status spk_hf_lazy_add(spk_hf_lazyset *s, spk_hf_lazy *z)
{
    if (s->n == s->cap) {
        size_t nc = s->cap ? 2 * s->cap : 64;
        spk_hf_lazy **nz = realloc(s->z, nc * sizeof *nz);
        if (!nz)
            return spk_err(SPK_ERR_NOMEM, "hf: out of memory");
        s->z = nz;
        s->cap = nc;
    }
    z->map_size = (z->size + s->page - 1) / s->page * s->page;
    if (!z->map_size)
        z->map_size = s->page;
    /* eager: shared anonymous memory, so that the loader's MADV_DONTNEED on pages it copied
     * from drops only page table entries, never the contents */
    void *p = mmap(NULL, z->map_size, PROT_READ | PROT_WRITE,
                   s->lazy ? MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE : MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return spk_err(SPK_ERR_NOMEM, "hf: cannot map %zu bytes for tensor '%s': %s", z->map_size, z->name,
                       strerror(errno));
    z->base = p;
    s->z[s->n++] = z;
    if (s->lazy) {
        madvise(p, z->map_size, MADV_DONTFORK); /* a forked child faults, never reads zeros */
        return SPK_OK;
    }
    z->fill(z, 0, z->n_rows, z->base);
    atomic_store(&z->done, (uint64_t)z->size);
    if (z->src)
        drop_source(s, z);
    return SPK_OK;
}

static int by_base(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)(*(spk_hf_lazy *const *)a)->base, y = (uintptr_t)(*(spk_hf_lazy *const *)b)->base;
    return x < y ? -1 : x > y;
}

static spk_hf_lazy *find(const spk_hf_lazyset *s, uintptr_t a)
{
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        spk_hf_lazy *z = s->z[mid];
        if (a < (uintptr_t)z->base)
            hi = mid;
        else if (a >= (uintptr_t)z->base + z->map_size)
            lo = mid + 1;
        else
            return z;
    }
    return NULL;
}

/* The page at `addr`: the rows it holds converted, its bytes copied in (zeros past the end). */
static void serve(spk_hf_lazyset *s, uintptr_t addr)
{
    const uintptr_t a = addr & ~(uintptr_t)(s->page - 1);
    memset(s->pagebuf, 0, s->page);
    spk_hf_lazy *z = find(s, a);
    if (z) {
        const size_t off = a - (uintptr_t)z->base;
        if (off < z->size) {
            const uint64_t r0 = off / z->row_bytes;
            uint64_t r1 = (off + s->page + z->row_bytes - 1) / z->row_bytes;
            if (r1 > z->n_rows)
                r1 = z->n_rows;
            z->fill(z, r0, r1, s->scratch);
            size_t n = z->size - off < s->page ? z->size - off : s->page;
            memcpy(s->pagebuf, s->scratch + (off - r0 * z->row_bytes), n);
            if (atomic_fetch_add(&z->done, (uint64_t)n) + n >= z->size && z->src && !z->src_dropped) {
                drop_source(s, z); /* all made: the source pages are not needed (re-read if ever) */
                z->src_dropped = 1;
            }
        }
    }
    struct uffdio_copy c = {.dst = a, .src = (uintptr_t)s->pagebuf, .len = s->page, .mode = 0};
    while (ioctl(s->fd, UFFDIO_COPY, &c) != 0 && errno == EAGAIN)
        c.copy = 0;
}

static void *fault_thread(void *arg)
{
    spk_hf_lazyset *s = arg;
    for (;;) {
        struct pollfd p[2] = {{.fd = s->fd, .events = POLLIN}, {.fd = s->stop[0], .events = POLLIN}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[1].revents)
            break;
        struct uffd_msg msg;
        if (read(s->fd, &msg, sizeof msg) != (ssize_t)sizeof msg)
            continue;
        if (msg.event == UFFD_EVENT_PAGEFAULT)
            serve(s, (uintptr_t)msg.arg.pagefault.address);
    }
    return NULL;
}

/* Lazy start failed: undo the registrations and convert everything now (the regions are plain
 * private memory again). */
static spk_status go_eager(spk_hf_lazyset *s, size_t n_registered)
{
    for (size_t i = 0; i < n_registered; i++) {
        struct uffdio_range r = {.start = (uintptr_t)s->z[i]->base, .len = s->z[i]->map_size};
        ioctl(s->fd, UFFDIO_UNREGISTER, &r);
    }
    close(s->fd);
    s->fd = -1;
    s->lazy = 0;
    for (size_t i = 0; i < s->n; i++) {
        spk_hf_lazy *z = s->z[i];
        z->fill(z, 0, z->n_rows, z->base);
        atomic_store(&z->done, (uint64_t)z->size);
        if (z->src)
            drop_source(s, z);
    }
    return SPK_OK;
}

spk_status spk_hf_lazy_start(spk_hf_lazyset *s)
{
    if (!s->lazy || !s->n)
        return SPK_OK;
    qsort(s->z, s->n, sizeof *s->z, by_base);
    size_t need = s->page;
    for (size_t i = 0; i < s->n; i++) { /* the rows one page can touch */
        size_t rows = s->page / s->z[i]->row_bytes + 2;
        if (rows * s->z[i]->row_bytes > need)
            need = rows * s->z[i]->row_bytes;
    }
    s->scratch_size = need;
    if (posix_memalign((void **)&s->scratch, s->page, need) || posix_memalign((void **)&s->pagebuf, s->page, s->page))
        return spk_err(SPK_ERR_NOMEM, "hf: out of memory");
    for (size_t i = 0; i < s->n; i++) {
        struct uffdio_register r = {.range = {.start = (uintptr_t)s->z[i]->base, .len = s->z[i]->map_size},
                                    .mode = UFFDIO_REGISTER_MODE_MISSING};
        if (ioctl(s->fd, UFFDIO_REGISTER, &r) != 0)
            return go_eager(s, i);
    }
    if (pipe2(s->stop, O_CLOEXEC) != 0)
        return go_eager(s, s->n);
    /* the thread takes no signals: they stay with the application's threads */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    const int rc = pthread_create(&s->thread, NULL, fault_thread, s);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0)
        return go_eager(s, s->n);
    s->running = 1;
    return SPK_OK;
}

uint64_t spk_hf_lazy_done(const spk_hf_lazyset *s, const char *name)
{
    uint64_t n = 0;
    for (size_t i = 0; s && i < s->n; i++)
        if (!name || !strcmp(name, s->z[i]->name))
            n += atomic_load(&s->z[i]->done);
    return n;
}

void spk_hf_lazy_free(spk_hf_lazyset *s)
{
    if (!s)
        return;
    if (s->running) {
        char c = 1;
        while (write(s->stop[1], &c, 1) < 0 && errno == EINTR) {
        }
        pthread_join(s->thread, NULL);
    }
    for (int i = 0; i < 2; i++)
        if (s->stop[i] >= 0)
            close(s->stop[i]);
    for (size_t i = 0; i < s->n; i++)
        munmap(s->z[i]->base, s->z[i]->map_size);
    if (s->fd >= 0)
        close(s->fd);
    free(s->z);
    free(s->scratch);
    free(s->pagebuf);
    free(s);
}
