/* sim.c - the discrete-event replay of sim.h. It calls only timeshare.h's functions, with
 * simulated times; it never sleeps or reads a clock. */
#include "sim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t fx_min(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

static void fx_sim_fail(struct fx_sim *s, const char *what, uint32_t proc)
{
    if (s->error[0]) return; /* keep the first */
    snprintf(s->error, sizeof s->error, "%s (process %u at %llu ns)", what, proc,
             (unsigned long long)s->now);
}

void fx_sim_init(struct fx_sim *s, enum fx_sim_mode mode, uint64_t start_ns)
{
    memset(s, 0, sizeof *s);
    s->r = calloc(1, sizeof *s->r);
    if (!s->r) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    s->r->magic = FX_MAGIC;
    s->r->version = FX_LAYOUT_VERSION;
    s->r->size = sizeof *s->r;
    s->dev = 0;
    s->r->devs[0].in_use = 1;
    s->r->devs[0].lease_slice = FX_NONE;
    s->mode = mode;
    s->now = start_ns;
    s->dev_last_proc = FX_NONE;
}

void fx_sim_free(struct fx_sim *s)
{
    for (uint32_t i = 0; i < s->nprocs; i++) free(s->procs[i].grants);
    free(s->runs);
    free(s->r);
    s->r = NULL;
}

void fx_sim_slice(struct fx_sim *s, uint32_t slice, const char *name, int32_t priority,
                  uint32_t share, uint32_t burst)
{
    struct fx_slice *sl = &s->r->slices[slice];
    snprintf(sl->name, sizeof sl->name, "%s", name);
    sl->in_use = 1;
    sl->priority = priority;
    sl->compute[s->dev] = share;
    sl->burst[s->dev] = burst;
}

uint32_t fx_sim_add(struct fx_sim *s, uint32_t slice, uint64_t kernel_ns, uint64_t start_ns)
{
    uint32_t n = (uint32_t)(sizeof s->procs / sizeof s->procs[0]);
    if (s->nprocs == n) {
        fx_sim_fail(s, "too many processes", s->nprocs);
        return n - 1;
    }
    uint32_t i = s->nprocs++;
    struct fx_sim_proc *p = &s->procs[i];
    memset(p, 0, sizeof *p);
    p->pid = (int32_t)(1000 + i);
    p->slice = slice;
    p->kernel_ns = kernel_ns;
    p->start_ns = start_ns;
    p->stop_ns = FX_SIM_NEVER;
    p->stop_how = FX_SIM_IDLE;
    p->last_ask_ns = FX_SIM_NEVER;
    p->state = FX_SIM_ASK;
    p->wake_ns = start_ns;
    return i;
}

void fx_sim_stop(struct fx_sim *s, uint32_t proc, uint64_t at_ns, enum fx_sim_stop how)
{
    struct fx_sim_proc *p = &s->procs[proc];
    if (at_ns < s->now) fx_sim_fail(s, "a stop in the past", proc);
    p->stop_ns = at_ns;
    p->stop_how = how;
    /* a running process notices at its kernel's end, unless it dies */
    if (p->state != FX_SIM_GONE && p->wake_ns > at_ns &&
        (how == FX_SIM_DIE || p->state != FX_SIM_RUN))
        p->wake_ns = at_ns;
}

/* Whether the process wants the device at `t` (its duty pattern), and when it next does. */
static int fx_sim_wants(const struct fx_sim_proc *p, uint64_t t)
{
    if (t < p->start_ns || t >= p->stop_ns) return 0;
    return p->off_ns == 0 || (t - p->start_ns) % (p->on_ns + p->off_ns) < p->on_ns;
}

static uint64_t fx_sim_next_on(const struct fx_sim_proc *p, uint64_t t)
{
    if (t < p->start_ns) return p->start_ns;
    uint64_t period = p->on_ns + p->off_ns;
    return p->start_ns + ((t - p->start_ns) / period + 1) * period;
}

/* Sleep until `t`, but wake at stop_ns to stop exactly then. */
static void fx_sim_sleep(struct fx_sim *s, struct fx_sim_proc *p, enum fx_sim_state st,
                         uint64_t t)
{
    p->state = st;
    p->wake_ns = p->stop_ns > s->now ? fx_min(t, p->stop_ns) : t;
}

static void fx_sim_grant(struct fx_sim *s, struct fx_sim_proc *p, uint32_t i, uint64_t prev)
{
    if (p->ngrants == p->grants_cap) {
        uint32_t cap = p->grants_cap ? 2 * p->grants_cap : 64;
        struct fx_sim_grant *g = realloc(p->grants, cap * sizeof *g);
        if (!g) {
            fx_sim_fail(s, "out of memory for grants", i);
            return;
        }
        p->grants = g;
        p->grants_cap = cap;
    }
    p->grants[p->ngrants++] = (struct fx_sim_grant){s->now, prev};
}

static void fx_sim_submit(struct fx_sim *s, struct fx_sim_proc *p, uint32_t i)
{
    uint64_t now = s->now, start = now;
    if (s->mode == FX_SIM_TIME) {
        /* one queue: a kernel waits for whatever was submitted before it */
        if (s->dev_free_ns > now) {
            start = s->dev_free_ns;
            if (s->dev_last_proc != i) p->queued_ns += start - now;
        }
        s->dev_free_ns = start + p->kernel_ns;
        s->dev_last_proc = i;
    }
    p->kernel_end_ns = start + p->kernel_ns;
    if (s->nruns == s->runs_cap) {
        uint32_t cap = s->runs_cap ? 2 * s->runs_cap : 4096;
        struct fx_sim_run *r = realloc(s->runs, cap * sizeof *r);
        if (!r) {
            fx_sim_fail(s, "out of memory for runs", i);
            return;
        }
        s->runs = r;
        s->runs_cap = cap;
    }
    s->runs[s->nruns++] = (struct fx_sim_run){i, start, p->kernel_end_ns};
    /* the shim touches with the time its in-flight work should end */
    if (p->holding && s->mode == FX_SIM_TIME)
        fx_ts_touch(s->r, s->dev, p->pid, now, p->kernel_end_ns);
    p->state = FX_SIM_RUN;
    p->wake_ns = fx_min(now + FX_SIM_TOUCH_NS, p->kernel_end_ns);
    if (p->stop_how == FX_SIM_DIE && p->stop_ns > now) p->wake_ns = fx_min(p->wake_ns, p->stop_ns);
}

static void fx_sim_release(struct fx_sim *s, struct fx_sim_proc *p)
{
    fx_ts_release(s->r, p->slice, p->pid, s->dev, p->used_ns, s->now);
    p->charged_ns += p->used_ns;
    p->used_ns = 0;
    p->holding = 0;
}

/* Ask the core, the way hook_launch.c's gate does, and act on the answer. */
static void fx_sim_ask(struct fx_sim *s, struct fx_sim_proc *p, uint32_t i)
{
    struct fx_region *r = s->r;
    uint64_t now = s->now;
    if (!fx_ts_needed(r, p->slice, s->dev, now)) {
        p->unscheduled++;
        fx_sim_submit(s, p, i);
        return;
    }
    for (int tries = 0; tries < 3; tries++) {
        if (p->holding && p->used_ns >= FX_SIM_SETTLE_NS) {
            /* long runs are charged as they go */
            fx_ts_charge(r, p->slice, s->dev, p->used_ns, now);
            p->charged_ns += p->used_ns;
            p->used_ns = 0;
        }
        uint64_t used = p->holding ? p->used_ns : 0, prev = p->last_ask_ns;
        struct fx_ts_decision d =
            s->mode == FX_SIM_TIME
                ? fx_ts_admit(r, p->slice, p->pid, s->dev, now, used)
                : fx_ts_admit_spatial(r, p->slice, s->dev, now, used, p->holding);
        p->last_ask_ns = now;
        p->last_verdict = d.verdict;
        if (d.verdict == FX_TS_GO) {
            p->go++;
            if (s->mode == FX_SIM_TIME && r->devs[s->dev].lease_pid != p->pid)
                fx_sim_fail(s, "GO without holding the lease", i);
            int fresh = !p->holding ||
                        (s->mode == FX_SIM_TIME && d.lease_start_ns != p->lease_start_ns);
            if (fresh) {
                if (p->holding && p->used_ns) {
                    /* a new lease while we thought we held the old one (we paused, the lease
                     * passed on and came back): the old lease's time still counts */
                    p->stale_ns += p->used_ns;
                    fx_ts_charge(r, p->slice, s->dev, p->used_ns, now);
                    p->charged_ns += p->used_ns;
                }
                fx_sim_grant(s, p, i, prev);
                p->holding = 1;
                p->lease_start_ns = d.lease_start_ns;
                p->used_ns = 0;
            }
            fx_sim_submit(s, p, i);
            return;
        }
        if (d.verdict == FX_TS_RELEASE || p->holding) {
            if (d.verdict == FX_TS_RELEASE) p->release++;
            else p->lost++;
            fx_sim_release(s, p);
            if (d.verdict == FX_TS_RELEASE) continue; /* drained: ask again at once */
        }
        p->wait++;
        fx_sim_sleep(s, p, FX_SIM_ASK, now + fx_min(d.retry_after_ns, FX_SIM_MAX_WAIT_NS));
        return;
    }
    fx_sim_fail(s, "RELEASE three times in a row at one instant", i);
    p->state = FX_SIM_GONE;
}

static void fx_sim_step(struct fx_sim *s, uint32_t i)
{
    struct fx_sim_proc *p = &s->procs[i];
    uint64_t now = s->now;
    s->events++;
    if (p->state == FX_SIM_RUN) {
        if (p->stop_how == FX_SIM_DIE && now >= p->stop_ns) {
            p->state = FX_SIM_GONE; /* its kernel still completes on the device */
            return;
        }
        if (now < p->kernel_end_ns) {
            if (p->holding && s->mode == FX_SIM_TIME)
                fx_ts_touch(s->r, s->dev, p->pid, now, p->kernel_end_ns);
            p->wake_ns = fx_min(now + FX_SIM_TOUCH_NS, p->kernel_end_ns);
            if (p->stop_how == FX_SIM_DIE && p->stop_ns > now)
                p->wake_ns = fx_min(p->wake_ns, p->stop_ns);
            return;
        }
        p->gpu_ns += p->kernel_ns;
        if (p->holding) p->used_ns += p->kernel_ns;
        p->state = FX_SIM_ASK;
    }
    if (now >= p->stop_ns) {
        if (p->stop_how == FX_SIM_EXIT && p->holding) fx_sim_release(s, p);
        p->state = FX_SIM_GONE;
        return;
    }
    if (!fx_sim_wants(p, now)) {
        fx_sim_sleep(s, p, FX_SIM_PAUSE, fx_sim_next_on(p, now)); /* keeps what it holds */
        return;
    }
    fx_sim_ask(s, p, i);
}

void fx_sim_run(struct fx_sim *s, uint64_t until_ns)
{
    while (!s->error[0]) {
        uint32_t next = FX_NONE;
        for (uint32_t i = 0; i < s->nprocs; i++) {
            const struct fx_sim_proc *p = &s->procs[i];
            if (p->state == FX_SIM_GONE || p->wake_ns >= until_ns) continue;
            if (next == FX_NONE || p->wake_ns < s->procs[next].wake_ns) next = i;
        }
        if (next == FX_NONE) break;
        if (s->procs[next].wake_ns < s->now) {
            fx_sim_fail(s, "an event in the past", next);
            break;
        }
        s->now = s->procs[next].wake_ns;
        fx_sim_step(s, next);
    }
    if (s->now < until_ns) s->now = until_ns;
}

uint64_t fx_sim_gpu(const struct fx_sim *s, uint32_t proc, uint64_t from_ns, uint64_t to_ns)
{
    uint64_t sum = 0;
    for (uint32_t k = 0; k < s->nruns; k++) {
        const struct fx_sim_run *run = &s->runs[k];
        if (proc != FX_NONE && run->proc != proc) continue;
        uint64_t a = run->start_ns > from_ns ? run->start_ns : from_ns;
        uint64_t b = fx_min(run->end_ns, to_ns);
        if (a < b) sum += b - a;
    }
    return sum;
}

const struct fx_sim_grant *fx_sim_grant_after(const struct fx_sim *s, uint32_t proc,
                                              uint64_t from_ns)
{
    const struct fx_sim_proc *p = &s->procs[proc];
    for (uint32_t k = 0; k < p->ngrants; k++)
        if (p->grants[k].at_ns >= from_ns) return &p->grants[k];
    return NULL;
}

uint32_t fx_sim_holder(const struct fx_sim *s)
{
    int32_t pid = s->r->devs[s->dev].lease_pid;
    for (uint32_t i = 0; i < s->nprocs; i++)
        if (pid && s->procs[i].pid == pid) return i;
    return FX_NONE;
}

const char *fx_sim_error(const struct fx_sim *s)
{
    return s->error;
}

enum fx_ts_verdict fx_sim_probe(const struct fx_sim *s, uint32_t proc, uint64_t at_ns)
{
    struct fx_region *copy = malloc(sizeof *copy);
    if (!copy) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    memcpy(copy, s->r, sizeof *copy);
    const struct fx_sim_proc *p = &s->procs[proc];
    struct fx_ts_decision d = fx_ts_admit(copy, p->slice, p->pid, s->dev, at_ns, 0);
    free(copy);
    return d.verdict;
}

uint64_t fx_sim_longest_turn(const struct fx_sim *s, uint32_t proc, uint64_t from_ns,
                             uint64_t to_ns, uint32_t *turns)
{
    uint64_t longest = 0, begin = 0, end = 0;
    uint32_t n = 0;
    for (uint32_t k = 0; k < s->nruns; k++) {
        const struct fx_sim_run *run = &s->runs[k];
        if (run->proc != proc || run->start_ns < from_ns || run->end_ns > to_ns) continue;
        if (n == 0 || run->start_ns != end) {
            begin = run->start_ns; /* not back to back with its last kernel: a new turn */
            n++;
        }
        end = run->end_ns;
        if (end - begin > longest) longest = end - begin;
    }
    if (turns) *turns = n;
    return longest;
}

uint64_t fx_sim_idle(const struct fx_sim *s, uint64_t from_ns, uint64_t to_ns, uint64_t *longest)
{
    uint64_t total = 0, at = from_ns, gap_max = 0;
    for (uint32_t k = 0; k <= s->nruns; k++) {
        /* runs are in submission order, which is start order in time mode */
        uint64_t start = k < s->nruns ? s->runs[k].start_ns : to_ns;
        if (start > to_ns) start = to_ns;
        if (start > at) {
            total += start - at;
            if (start - at > gap_max) gap_max = start - at;
        }
        if (k < s->nruns && s->runs[k].end_ns > at) at = s->runs[k].end_ns;
    }
    if (longest) *longest = gap_max;
    return total;
}

uint64_t fx_sim_lease_free_at(const struct fx_sim *s)
{
    const struct fx_dev *d = &s->r->devs[s->dev];
    uint64_t at = d->lease_touch_ns + FX_TS_IDLE_NS;
    if (d->lease_busy_ns > at) at = d->lease_busy_ns;
    if (at > d->lease_touch_ns + FX_TS_SILENT_NS) at = d->lease_touch_ns + FX_TS_SILENT_NS;
    return at;
}
