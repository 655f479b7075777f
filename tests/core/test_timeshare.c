/* test_timeshare.c - time-share schedules replayed with a simulated clock (sim.h), and the exact
 * figures they must give. Deterministic: the same build prints the same numbers every run, so
 * bounds below come from the algorithm (quantum, bucket depth, retry intervals), not from noise.
 *
 *   test_timeshare            run every case
 *   test_timeshare CASE...    run these cases
 *   test_timeshare --list     print the case names, one a line
 * Prints a case's figures, then one line: "ok NAME", "FAIL NAME", or for a case marked with a
 * known bug "XFAIL NAME: bug" (its checks fail as expected: not counted as a failure) or
 * "XPASS NAME" (the bug no longer shows: a failure, so that the mark is removed). Exits 1 when a
 * case failed, 2 on bad usage.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sim.h"

#define MS FX_SIM_MS
#define US FX_SIM_US
#define T0 (1000 * MS) /* replays start at 1 s: the core reads 0 as "never" */
#define K (100 * US)   /* the usual kernel: shorter than FX_TS_IDLE_NS */

/* ---- checks ------------------------------------------------------------------------------ */

static int fx_fails;

static void fx_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fx_note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("    ", stdout);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
}

static void fx_expect_range(int line, const char *what, uint64_t got, uint64_t lo, uint64_t hi)
{
    if (got >= lo && got <= hi) return;
    printf("    line %d: %s: expected %llu..%llu, got %llu\n", line, what, (unsigned long long)lo,
           (unsigned long long)hi, (unsigned long long)got);
    fx_fails++;
}

static void fx_expect_pct(int line, const char *what, double got, double lo, double hi)
{
    if (got >= lo && got <= hi) return;
    printf("    line %d: %s: expected %.2f..%.2f %%, got %.3f %%\n", line, what, lo, hi, got);
    fx_fails++;
}

static const char *fx_verdict_name(enum fx_ts_verdict v)
{
    return v == FX_TS_GO ? "GO" : v == FX_TS_WAIT ? "WAIT" : v == FX_TS_RELEASE ? "RELEASE" : "?";
}

static void fx_expect_verdict(int line, const char *what, enum fx_ts_verdict got,
                              enum fx_ts_verdict want)
{
    if (got == want) return;
    printf("    line %d: %s: expected %s, got %s\n", line, what, fx_verdict_name(want),
           fx_verdict_name(got));
    fx_fails++;
}

static void fx_expect_before(int line, const char *what, uint64_t got, uint64_t limit)
{
    if (got < limit) return;
    printf("    line %d: %s: expected before %llu, got %llu (%llu ns later)\n", line, what,
           (unsigned long long)limit, (unsigned long long)got,
           (unsigned long long)(got - limit));
    fx_fails++;
}

#define EXPECT_EQ(what, got, want) fx_expect_range(__LINE__, what, got, want, want)
#define EXPECT_RANGE(what, got, lo, hi) fx_expect_range(__LINE__, what, got, lo, hi)
#define EXPECT_PCT(what, got, lo, hi) fx_expect_pct(__LINE__, what, got, lo, hi)
#define EXPECT_VERDICT(what, got, want) fx_expect_verdict(__LINE__, what, got, want)
#define EXPECT_BEFORE(what, got, limit) fx_expect_before(__LINE__, what, got, limit)
#define EXPECT_TRUE(what, cond) fx_expect_range(__LINE__, what, (cond) ? 1u : 0u, 1, 1)

static double fx_pct(uint64_t part, uint64_t whole)
{
    return 100.0 * (double)part / (double)whole;
}

static double fx_ms(uint64_t ns)
{
    return (double)ns / 1e6;
}

/* The replay itself went as the model expects (no runaway loop, nothing out of order). */
static void fx_expect_clean(int line, const struct fx_sim *s)
{
    if (!fx_sim_error(s)[0]) return;
    printf("    line %d: replay error: %s\n", line, fx_sim_error(s));
    fx_fails++;
}
#define EXPECT_CLEAN(s) fx_expect_clean(__LINE__, s)

/* Share of [from, to) that process `p` ran, in percent, with a line of figures. */
static double fx_share(const struct fx_sim *s, uint32_t p, uint64_t from, uint64_t to,
                       const char *label)
{
    uint64_t g = fx_sim_gpu(s, p, from, to);
    double pct = fx_pct(g, to - from);
    fx_note("%-7s %9.3f ms of %7.1f ms = %7.3f %%", label, fx_ms(g), fx_ms(to - from), pct);
    return pct;
}

/* A line with a process's verdicts over the whole replay. */
static void fx_counts(const struct fx_sim *s, uint32_t p, const char *label)
{
    const struct fx_sim_proc *q = &s->procs[p];
    fx_note("%-7s leases %u, GO %u, WAIT %u, RELEASE %u, lost %u, queued %.3f ms, stale %.3f ms",
            label, q->ngrants, q->go, q->wait, q->release, q->lost, fx_ms(q->queued_ns),
            fx_ms(q->stale_ns));
}

/* The fair-share clock of process p's slice on the device. */
static uint64_t fx_vtime(const struct fx_sim *s, uint32_t p)
{
    return s->r->slices[s->procs[p].slice].vtime_ns[s->dev];
}

/* The holder `h` has just gone silent (died, hung or paused). Its lease must be free exactly at
 * its last touch + `rule_ns` (`rule` names which limit applies), the waiter `w` told WAIT 1 ns
 * before that and GO then, and in the replay get the lease at its first asking from then on. */
static void fx_expect_handoff(struct fx_sim *s, uint32_t h, uint32_t w, uint64_t rule_ns,
                              const char *rule)
{
    const struct fx_dev *d = &s->r->devs[s->dev];
    uint64_t touch = d->lease_touch_ns, busy = d->lease_busy_ns, free_at = fx_sim_lease_free_at(s);
    fx_note("holder silent from %.3f ms, claiming work until last touch +%.3f ms; fair-share "
            "clocks: holder %.3f ms, waiter %.3f ms",
            fx_ms(touch - T0), fx_ms(busy - touch), fx_ms(fx_vtime(s, h)), fx_ms(fx_vtime(s, w)));
    EXPECT_EQ(rule, free_at - touch, rule_ns);
    EXPECT_VERDICT("the waiter asking 1 ns before the lease is free",
                   fx_sim_probe(s, w, free_at - 1), FX_TS_WAIT);
    EXPECT_VERDICT("the waiter asking when the lease is free", fx_sim_probe(s, w, free_at),
                   FX_TS_GO);
    fx_sim_run(s, free_at + 10 * MS);
    const struct fx_sim_grant *g = fx_sim_grant_after(s, w, touch);
    EXPECT_TRUE("the waiter got the lease", g != NULL);
    if (!g) return;
    fx_note("waiter's lease at last touch +%.3f ms (its asking before: +%.3f ms)",
            fx_ms(g->at_ns - touch), fx_ms(g->prev_ask_ns - touch));
    EXPECT_RANGE("waiter's lease (ns after the last touch)", g->at_ns - touch, free_at - touch,
                 free_at - touch + FX_TS_RETRY_MAX_NS - 1);
    EXPECT_BEFORE("waiter's asking before it", g->prev_ask_ns, free_at);
}

/* ---- cases ------------------------------------------------------------------------------- */

#define SPAN (2000 * MS)

/* Two processes of slices with `share_a`/`burst_a` and `share_b`/`burst_b`, both asking all
 * the time from T0 with kernels of K. */
static void fx_pair(struct fx_sim *s, enum fx_sim_mode mode, uint32_t share_a, uint32_t burst_a,
                    uint32_t share_b, uint32_t burst_b)
{
    fx_sim_init(s, mode, T0);
    fx_sim_slice(s, 1, "a", FLEXAI_PRIORITY_NORMAL, share_a, burst_a);
    fx_sim_slice(s, 2, "b", FLEXAI_PRIORITY_NORMAL, share_b, burst_b);
    fx_sim_add(s, 1, K, T0);
    fx_sim_add(s, 2, K, T0);
}

/* Hard caps 30% and 70% competing for 2 s: each gets its cap, and no kernel ever waits for the
 * other slice's (the lease changes hands only once drained). */
static void fx_case_cap_30_70(void)
{
    struct fx_sim s;
    fx_pair(&s, FX_SIM_TIME, 30, 0, 70, 0);
    fx_sim_run(&s, T0 + SPAN);
    double pa = fx_share(&s, 0, T0, T0 + SPAN, "a 30");
    double pb = fx_share(&s, 1, T0, T0 + SPAN, "b 70");
    fx_note("device idle %.3f ms; %llu events", fx_ms(fx_sim_idle(&s, T0, T0 + SPAN, NULL)),
            (unsigned long long)s.events);
    fx_counts(&s, 0, "a");
    fx_counts(&s, 1, "b");
    EXPECT_CLEAN(&s);
    EXPECT_PCT("a (cap 30)", pa, 29.0, 31.0);
    EXPECT_PCT("b (cap 70)", pb, 69.0, 71.0);
    /* a cap never gives more than rate x time + its head start (a quarter bucket) + a kernel */
    EXPECT_RANGE("a's GPU time", fx_sim_gpu(&s, 0, T0, T0 + SPAN), 0,
                 SPAN * 30 / 100 + FX_TS_WINDOW_NS * 30 / 100 / 4 + K);
    EXPECT_RANGE("b's GPU time", fx_sim_gpu(&s, 1, T0, T0 + SPAN), 0,
                 SPAN * 70 / 100 + FX_TS_WINDOW_NS * 70 / 100 / 4 + K);
    EXPECT_EQ("a's kernels queued behind b's (ns)", s.procs[0].queued_ns, 0);
    EXPECT_EQ("b's kernels queued behind a's (ns)", s.procs[1].queued_ns, 0);
    fx_sim_free(&s);
}

/* A 30% hard cap alone gets 30% and no more, although the device is otherwise idle. */
static void fx_case_cap_30_alone(void)
{
    struct fx_sim s;
    fx_sim_init(&s, FX_SIM_TIME, T0);
    fx_sim_slice(&s, 1, "a", FLEXAI_PRIORITY_NORMAL, 30, 0);
    fx_sim_add(&s, 1, K, T0);
    fx_sim_run(&s, T0 + SPAN);
    double pa = fx_share(&s, 0, T0, T0 + SPAN, "a 30");
    fx_counts(&s, 0, "a");
    EXPECT_CLEAN(&s);
    EXPECT_PCT("a (cap 30, alone)", pa, 29.0, 31.0);
    EXPECT_RANGE("a's GPU time", fx_sim_gpu(&s, 0, T0, T0 + SPAN), 0,
                 SPAN * 30 / 100 + FX_TS_WINDOW_NS * 30 / 100 / 4 + K);
    fx_sim_free(&s);
}

/* 30% with burst 100 alone: the guarantee may use the whole idle device, in one lease. */
static void fx_case_burst_alone(void)
{
    struct fx_sim s;
    fx_sim_init(&s, FX_SIM_TIME, T0);
    fx_sim_slice(&s, 1, "a", FLEXAI_PRIORITY_NORMAL, 30, 100);
    fx_sim_add(&s, 1, K, T0);
    fx_sim_run(&s, T0 + SPAN);
    double pa = fx_share(&s, 0, T0, T0 + SPAN, "a 30+");
    fx_counts(&s, 0, "a");
    EXPECT_CLEAN(&s);
    EXPECT_PCT("a (30, burst 100, alone)", pa, 100.0, 100.0);
    EXPECT_EQ("a's leases", s.procs[0].ngrants, 1);
    fx_sim_free(&s);
}

/* 30% with burst 100 against a 70% hard cap: at least its 30%, and together they fill the
 * device but for the hand-overs (at most one retry, FX_TS_RETRY_MAX_NS, each). */
static void fx_case_burst_vs_cap70(void)
{
    struct fx_sim s;
    fx_pair(&s, FX_SIM_TIME, 30, 100, 70, 0);
    fx_sim_run(&s, T0 + SPAN);
    double pa = fx_share(&s, 0, T0, T0 + SPAN, "a 30+");
    double pb = fx_share(&s, 1, T0, T0 + SPAN, "b 70");
    fx_counts(&s, 0, "a");
    fx_counts(&s, 1, "b");
    EXPECT_CLEAN(&s);
    EXPECT_PCT("a (30, burst 100)", pa, 29.0, 100.0);
    EXPECT_PCT("b (cap 70)", pb, 0.0, 71.0);
    uint64_t idle = fx_sim_idle(&s, T0, T0 + SPAN, NULL);
    fx_note("device idle %.3f ms", fx_ms(idle));
    EXPECT_RANGE("device idle (ns)", idle, 0,
                 (s.procs[0].ngrants + s.procs[1].ngrants) * FX_TS_RETRY_MAX_NS);
    fx_sim_free(&s);
}

/* 30% with burst 100 against a slice without a share: their weights are 30 and the 70 left. */
static void fx_case_burst_vs_unshared(void)
{
    struct fx_sim s;
    fx_pair(&s, FX_SIM_TIME, 30, 100, 0, 0);
    fx_sim_run(&s, T0 + SPAN);
    double pa = fx_share(&s, 0, T0, T0 + SPAN, "a 30+");
    double pb = fx_share(&s, 1, T0, T0 + SPAN, "b");
    fx_counts(&s, 0, "a");
    fx_counts(&s, 1, "b");
    EXPECT_CLEAN(&s);
    EXPECT_PCT("a (30, burst 100)", pa, 29.0, 31.0);
    EXPECT_PCT("b (no share: weight 70)", pb, 69.0, 71.0);
    fx_sim_free(&s);
}

/* 30% with burst 100 beside a 70% hard cap that runs 200 ms of every 400 ms: in each phase of
 * contention the burst slice gets its 30% within what one quantum and one settling step can
 * shift (FX_TS_QUANTUM_NS + FX_SIM_SETTLE_NS: 3 points of 200 ms), b gets its fair 70% of
 * them, and the burst slice takes b's pauses: the device idles only during hand-overs (a
 * retry each) and, today, up to FX_TS_WAITING_NS at each of b's pauses (see
 * dead_holder_behind). */
static void fx_case_burst_uses_idle(void)
{
    struct fx_sim s;
    const uint64_t on = 200 * MS, slack = FX_TS_QUANTUM_NS + FX_SIM_SETTLE_NS;
    fx_pair(&s, FX_SIM_TIME, 30, 100, 70, 0);
    s.procs[1].on_ns = on;
    s.procs[1].off_ns = on;
    fx_sim_run(&s, T0 + SPAN);
    fx_share(&s, 0, T0, T0 + SPAN, "a 30+");
    fx_share(&s, 1, T0, T0 + SPAN, "b 70~");
    for (uint64_t t = T0; t < T0 + SPAN; t += 2 * on) {
        double pa = fx_share(&s, 0, t, t + on, "  a, b on");
        EXPECT_PCT("a during one of b's on phases", pa, 30.0 - fx_pct(slack, on), 100.0);
    }
    uint64_t gap, idle = fx_sim_idle(&s, T0, T0 + SPAN, &gap);
    uint32_t pauses = (uint32_t)(SPAN / (2 * on)), leases = s.procs[0].ngrants + s.procs[1].ngrants;
    fx_note("device idle %.3f ms, longest gap %.3f ms; %u pauses of b, %u leases", fx_ms(idle),
            fx_ms(gap), pauses, leases);
    fx_counts(&s, 0, "a");
    fx_counts(&s, 1, "b");
    EXPECT_CLEAN(&s);
    EXPECT_RANGE("b's GPU time", fx_sim_gpu(&s, 1, T0, T0 + SPAN), 0,
                 SPAN / 2 * 70 / 100 + pauses * slack);
    EXPECT_RANGE("device idle (ns)", idle, 0,
                 pauses * FX_TS_WAITING_NS + leases * FX_TS_RETRY_MAX_NS);
    fx_sim_free(&s);
}

/* Two scheduled, uncapped slices of equal share take turns of one quantum. */
static void fx_case_quantum(void)
{
    struct fx_sim s;
    fx_pair(&s, FX_SIM_TIME, 50, 100, 50, 100);
    fx_sim_run(&s, T0 + SPAN);
    double pa = fx_share(&s, 0, T0, T0 + SPAN, "a 50+");
    double pb = fx_share(&s, 1, T0, T0 + SPAN, "b 50+");
    uint32_t ta = 0, tb = 0;
    uint64_t la = fx_sim_longest_turn(&s, 0, T0, T0 + SPAN, &ta);
    uint64_t lb = fx_sim_longest_turn(&s, 1, T0, T0 + SPAN, &tb);
    fx_note("turns a %u, b %u; longest a %.3f ms, b %.3f ms", ta, tb, fx_ms(la), fx_ms(lb));
    EXPECT_CLEAN(&s);
    EXPECT_PCT("a", pa, 49.0, 51.0);
    EXPECT_PCT("b", pb, 49.0, 51.0);
    /* the holder asks after each kernel and releases at its first asking past the quantum */
    EXPECT_RANGE("a's longest turn (ns)", la, FX_TS_QUANTUM_NS, FX_TS_QUANTUM_NS + K);
    EXPECT_RANGE("b's longest turn (ns)", lb, FX_TS_QUANTUM_NS, FX_TS_QUANTUM_NS + K);
    EXPECT_RANGE("a's turns", ta, SPAN / (2 * (FX_TS_QUANTUM_NS + K)) - 1,
                 SPAN / (2 * FX_TS_QUANTUM_NS) + 1);
    fx_sim_free(&s);
}

/* A high-priority slice arriving while a low one holds the lease takes it at its first asking;
 * the low one, asking next, no longer holds it (WAIT: it drains and releases), runs nothing
 * while the high one is active, and gets the lease back FX_TS_WAITING_NS after the high one's
 * last asking (its first asking from then on; it asks every FX_TS_OUTRANKED_RETRY_NS). */
static void fx_case_priority_takeover(void)
{
    struct fx_sim s;
    fx_sim_init(&s, FX_SIM_TIME, T0);
    fx_sim_slice(&s, 1, "low", FLEXAI_PRIORITY_LOW, 0, 0);
    fx_sim_slice(&s, 2, "high", FLEXAI_PRIORITY_HIGH, 0, 0);
    const uint64_t arrive = T0 + 500 * MS + 30 * US, leave = T0 + 1000 * MS,
                   end = T0 + 1500 * MS;
    uint32_t lo = fx_sim_add(&s, 1, K, T0), hi = fx_sim_add(&s, 2, K, arrive);
    fx_sim_stop(&s, hi, leave, FX_SIM_IDLE);

    fx_sim_run(&s, arrive);
    EXPECT_EQ("holder before the high one arrives", fx_sim_holder(&s), lo);
    uint64_t low_end = s.procs[lo].kernel_end_ns; /* low's kernel in flight */
    fx_sim_run(&s, arrive + 1);
    EXPECT_EQ("holder after the high one's first asking", fx_sim_holder(&s), hi);
    const struct fx_sim_grant *g = fx_sim_grant_after(&s, hi, arrive);
    EXPECT_EQ("the high one's lease starts at its arrival", g ? g->at_ns : 0, arrive);
    fx_sim_run(&s, low_end + 1);
    fx_note("low's kernel in flight ends %.3f ms after the takeover; its next asking gets %s",
            fx_ms(low_end - arrive), fx_verdict_name(s.procs[lo].last_verdict));
    EXPECT_EQ("low's next asking after the takeover", s.procs[lo].last_ask_ns, low_end);
    EXPECT_VERDICT("low's verdict then", s.procs[lo].last_verdict, FX_TS_WAIT);
    EXPECT_EQ("low's lost leases", s.procs[lo].lost, 1);

    fx_sim_run(&s, end);
    fx_share(&s, lo, arrive, leave, "low");
    fx_share(&s, hi, arrive, leave, "high");
    fx_counts(&s, lo, "low");
    fx_counts(&s, hi, "high");
    EXPECT_CLEAN(&s);
    EXPECT_EQ("low's GPU time while high is active", fx_sim_gpu(&s, lo, low_end, leave), 0);
    EXPECT_EQ("high's wait for low's kernel in flight (ns)", s.procs[hi].queued_ns,
              low_end - arrive);
    EXPECT_EQ("high's GPU time while active", fx_sim_gpu(&s, hi, arrive, leave), leave - low_end);
    uint64_t last_hi = s.procs[hi].last_ask_ns, back = last_hi + FX_TS_WAITING_NS;
    g = fx_sim_grant_after(&s, lo, arrive);
    EXPECT_TRUE("low got the lease back", g != NULL);
    if (g) {
        fx_note("high's last asking %.3f ms before it left; low's lease back at +%.3f ms after "
                "it (its asking before: +%.3f ms)",
                fx_ms(leave - last_hi), fx_ms(g->at_ns - last_hi), fx_ms(g->prev_ask_ns - last_hi));
        EXPECT_RANGE("low's lease back", g->at_ns, back, back + FX_TS_OUTRANKED_RETRY_NS - 1);
        EXPECT_BEFORE("low's asking before it", g->prev_ask_ns, back);
        EXPECT_EQ("low's GPU time after that", fx_sim_gpu(&s, lo, g->at_ns, end), end - g->at_ns);
    }
    fx_sim_free(&s);
}

/* The holder is killed in the middle of a short kernel while the waiter is behind it on the
 * fair-share clock: the lease is free FX_TS_IDLE_NS after its last touch (its work was done
 * before that), and the waiter gets it at its first asking from then on, not before. */
static void fx_case_dead_holder(void)
{
    struct fx_sim s;
    fx_pair(&s, FX_SIM_TIME, 50, 100, 50, 100);
    fx_sim_run(&s, T0 + 300 * MS);
    uint32_t h = FX_NONE;
    for (; s.now < T0 + 400 * MS; fx_sim_run(&s, s.now + 10 * US)) {
        h = fx_sim_holder(&s);
        if (h != FX_NONE && s.procs[h].state == FX_SIM_RUN && fx_vtime(&s, 1 - h) < fx_vtime(&s, h))
            break;
    }
    EXPECT_TRUE("a holder running, ahead of the waiter", s.now < T0 + 400 * MS);
    if (s.now < T0 + 400 * MS) {
        fx_sim_stop(&s, h, s.now + 1, FX_SIM_DIE);
        fx_sim_run(&s, s.now + 2);
        fx_expect_handoff(&s, h, 1 - h, FX_TS_IDLE_NS, "lease free at last touch + IDLE_NS");
    }
    EXPECT_CLEAN(&s);
    fx_sim_free(&s);
}

/* The same with the dead holder behind the waiter on the fair-share clock, as it is right after
 * it got the lease. A holder whose program pauses looks the same to the core (no touch), so
 * this is also every pause of a holder that got its lease for being behind. */
static void fx_case_dead_holder_behind(void)
{
    struct fx_sim s;
    fx_pair(&s, FX_SIM_TIME, 50, 100, 50, 100);
    fx_sim_run(&s, T0 + 300 * MS);
    uint32_t h = FX_NONE;
    for (; s.now < T0 + 400 * MS; fx_sim_run(&s, s.now + 10 * US)) {
        h = fx_sim_holder(&s);
        if (h != FX_NONE && fx_sim_grant_after(&s, h, T0 + 300 * MS)) break;
    }
    EXPECT_TRUE("a holder with a new lease", s.now < T0 + 400 * MS);
    if (s.now < T0 + 400 * MS) {
        EXPECT_TRUE("the holder behind the waiter", fx_vtime(&s, h) < fx_vtime(&s, 1 - h));
        fx_sim_stop(&s, h, s.now + 1, FX_SIM_DIE);
        fx_sim_run(&s, s.now + 2);
        fx_expect_handoff(&s, h, 1 - h, FX_TS_IDLE_NS, "lease free at last touch + IDLE_NS");
    }
    EXPECT_CLEAN(&s);
    fx_sim_free(&s);
}

/* The holder hangs (or dies) with a 5 ms kernel claimed in flight: the lease stays with it until
 * FX_TS_SILENT_NS after its last touch, exactly, though its claim runs longer. The waiter's
 * first kernel then waits on the device for the hung one's. */
static void fx_case_hung_holder(void)
{
    struct fx_sim s;
    fx_sim_init(&s, FX_SIM_TIME, T0);
    fx_sim_slice(&s, 1, "a", FLEXAI_PRIORITY_NORMAL, 50, 100);
    fx_sim_slice(&s, 2, "b", FLEXAI_PRIORITY_NORMAL, 50, 100);
    uint32_t a = fx_sim_add(&s, 1, 5 * MS, T0), b = fx_sim_add(&s, 2, K, T0);
    fx_sim_run(&s, T0 + 300 * MS);
    while (!(fx_sim_holder(&s) == a && s.procs[a].state == FX_SIM_RUN &&
             s.procs[a].kernel_end_ns - s.now > 4 * MS) &&
           s.now < T0 + 400 * MS)
        fx_sim_run(&s, s.now + 10 * US);
    EXPECT_EQ("holder with a 5 ms kernel just started", fx_sim_holder(&s), a);
    uint64_t kernel_end = s.procs[a].kernel_end_ns, queued = s.procs[b].queued_ns;
    fx_sim_stop(&s, a, s.now + 1 * MS, FX_SIM_DIE);
    fx_sim_run(&s, s.now + 1 * MS + 1);
    fx_expect_handoff(&s, a, b, FX_TS_SILENT_NS, "lease free at last touch + SILENT_NS");
    const struct fx_sim_grant *g = fx_sim_grant_after(&s, b, kernel_end - 5 * MS);
    if (g) {
        fx_note("b's first kernel waited %.3f ms for a's", fx_ms(s.procs[b].queued_ns - queued));
        EXPECT_EQ("b's first kernel waited for a's (ns)", s.procs[b].queued_ns - queued,
                  kernel_end - g->at_ns);
    }
    EXPECT_CLEAN(&s);
    fx_sim_free(&s);
}

/* A resize (fx_ts_set) of a 30% cap to 70% at 1 s and back to 30% at 2 s: each second gets the
 * share set for it (the next asking sees it). */
static void fx_case_resize(void)
{
    struct fx_sim s;
    const uint64_t sec = 1000 * MS;
    fx_sim_init(&s, FX_SIM_TIME, T0);
    fx_sim_slice(&s, 1, "a", FLEXAI_PRIORITY_NORMAL, 30, 0);
    fx_sim_add(&s, 1, K, T0);
    fx_sim_run(&s, T0 + sec);
    fx_ts_set(s.r, 1, s.dev, 70, 0);
    fx_sim_run(&s, T0 + 2 * sec);
    fx_ts_set(s.r, 1, s.dev, 30, 0);
    fx_sim_run(&s, T0 + 3 * sec);
    double p1 = fx_share(&s, 0, T0, T0 + sec, "0-1 s");
    double p2 = fx_share(&s, 0, T0 + sec, T0 + 2 * sec, "1-2 s");
    double p3 = fx_share(&s, 0, T0 + 2 * sec, T0 + 3 * sec, "2-3 s");
    fx_counts(&s, 0, "a");
    EXPECT_CLEAN(&s);
    EXPECT_PCT("first second (30)", p1, 29.0, 31.0);
    EXPECT_PCT("second second (70)", p2, 69.0, 71.0);
    EXPECT_PCT("third second (30)", p3, 29.0, 31.0);
    fx_sim_free(&s);
}

/* Spatial mode (MPS): no lease, kernels overlap, each slice's own device time is capped. */
static void fx_case_spatial_caps(void)
{
    struct fx_sim s;
    fx_pair(&s, FX_SIM_SPATIAL, 30, 0, 70, 0);
    fx_sim_slice(&s, 3, "c", FLEXAI_PRIORITY_NORMAL, 30, 100);
    fx_sim_add(&s, 3, K, T0);
    fx_sim_run(&s, T0 + SPAN);
    double pa = fx_share(&s, 0, T0, T0 + SPAN, "a 30");
    double pb = fx_share(&s, 1, T0, T0 + SPAN, "b 70");
    double pc = fx_share(&s, 2, T0, T0 + SPAN, "c 30+");
    EXPECT_CLEAN(&s);
    EXPECT_PCT("a (cap 30)", pa, 29.0, 31.0);
    EXPECT_PCT("b (cap 70)", pb, 69.0, 71.0);
    EXPECT_PCT("c (30, burst 100: no cap)", pc, 100.0, 100.0);
    EXPECT_EQ("lease holder in spatial mode", fx_sim_holder(&s), FX_NONE);
    fx_sim_free(&s);
}

/* Spatial priorities: a running low slice is told RELEASE at its next asking once a high one
 * is active, runs nothing while it is, and resumes FX_TS_WAITING_NS after its last asking. */
static void fx_case_spatial_priority(void)
{
    struct fx_sim s;
    fx_sim_init(&s, FX_SIM_SPATIAL, T0);
    fx_sim_slice(&s, 1, "low", FLEXAI_PRIORITY_LOW, 0, 0);
    fx_sim_slice(&s, 2, "high", FLEXAI_PRIORITY_HIGH, 0, 0);
    const uint64_t arrive = T0 + 100 * MS + 30 * US, leave = T0 + 200 * MS, end = T0 + 300 * MS;
    uint32_t lo = fx_sim_add(&s, 1, K, T0), hi = fx_sim_add(&s, 2, K, arrive);
    fx_sim_stop(&s, hi, leave, FX_SIM_IDLE);
    fx_sim_run(&s, arrive);
    uint64_t low_end = s.procs[lo].kernel_end_ns;
    fx_sim_run(&s, low_end + 1);
    EXPECT_EQ("low's RELEASE verdicts after high arrived", s.procs[lo].release, 1);
    EXPECT_VERDICT("low's verdict asking again at once", s.procs[lo].last_verdict, FX_TS_WAIT);
    fx_sim_run(&s, end);
    fx_share(&s, lo, arrive, leave, "low");
    fx_share(&s, hi, arrive, leave, "high");
    fx_counts(&s, lo, "low");
    EXPECT_CLEAN(&s);
    EXPECT_EQ("high's first run at its arrival", s.procs[hi].ngrants ? s.procs[hi].grants[0].at_ns
                                                                     : 0, arrive);
    EXPECT_EQ("low's GPU time while high is active", fx_sim_gpu(&s, lo, low_end, leave), 0);
    uint64_t back = s.procs[hi].last_ask_ns + FX_TS_WAITING_NS;
    const struct fx_sim_grant *g = fx_sim_grant_after(&s, lo, arrive);
    EXPECT_TRUE("low ran again", g != NULL);
    if (g) {
        fx_note("low back %.3f ms after high's last asking",
                fx_ms(g->at_ns + FX_TS_WAITING_NS - back));
        EXPECT_RANGE("low's run back", g->at_ns, back, back + FX_TS_OUTRANKED_RETRY_NS - 1);
    }
    fx_sim_free(&s);
}

/* A high-priority slice with a 30% cap beside a normal one without a share: while the high one
 * waits for tokens, the device should go to the normal one (a cap is not a reservation). */
static void fx_case_capped_high(void)
{
    struct fx_sim s;
    fx_sim_init(&s, FX_SIM_TIME, T0);
    fx_sim_slice(&s, 1, "high", FLEXAI_PRIORITY_HIGH, 30, 0);
    fx_sim_slice(&s, 2, "normal", FLEXAI_PRIORITY_NORMAL, 0, 0);
    fx_sim_add(&s, 1, K, T0);
    fx_sim_add(&s, 2, K, T0);
    fx_sim_run(&s, T0 + SPAN);
    double ph = fx_share(&s, 0, T0, T0 + SPAN, "high 30");
    double pn = fx_share(&s, 1, T0, T0 + SPAN, "normal");
    fx_counts(&s, 1, "normal");
    EXPECT_CLEAN(&s);
    EXPECT_PCT("high (cap 30)", ph, 29.0, 31.0);
    EXPECT_PCT("normal (what the cap leaves)", pn, 69.0, 71.0);
    fx_sim_free(&s);
}

/* The holder touches its lease without the lock, with its own clock reading, which can be a
 * little later than the `now` another process took under the lock a moment before. A touch
 * 1 us "ahead" must not make a live holder look silent. */
static void fx_case_touch_after_now(void)
{
    struct fx_sim s;
    fx_sim_init(&s, FX_SIM_TIME, T0);
    fx_sim_slice(&s, 1, "a", FLEXAI_PRIORITY_NORMAL, 50, 100);
    fx_sim_slice(&s, 2, "b", FLEXAI_PRIORITY_NORMAL, 50, 100);
    uint32_t a = fx_sim_add(&s, 1, K, T0), b = fx_sim_add(&s, 2, K, T0 + 1 * MS);
    fx_sim_run(&s, T0 + 2500 * US + 1); /* a charged 2 ms at 2 ms: b is behind, it would be next */
    EXPECT_EQ("holder", fx_sim_holder(&s), a);
    uint64_t t = s.now;
    fx_ts_touch(s.r, s.dev, s.procs[a].pid, t + 1 * US, t + 1 * US + K);
    struct fx_ts_decision d = fx_ts_admit(s.r, 2, s.procs[b].pid, s.dev, t, 0);
    fx_note("b asking 1 us before a's touch: %s", d.verdict == FX_TS_GO ? "GO (took the lease of a "
            "live holder)" : "WAIT");
    EXPECT_VERDICT("b's verdict", d.verdict, FX_TS_WAIT);
    EXPECT_EQ("holder after b's asking", fx_sim_holder(&s), a);
    fx_sim_free(&s);
}

static const struct {
    const char *name;
    void (*run)(void);
    const char *known_bug; /* NULL, or why the case fails today (it runs as XFAIL) */
} fx_cases[] = {
    {"cap_30_70", fx_case_cap_30_70, NULL},
    {"cap_30_alone", fx_case_cap_30_alone, NULL},
    {"burst_alone", fx_case_burst_alone, NULL},
    {"burst_vs_cap70", fx_case_burst_vs_cap70, NULL},
    {"burst_vs_unshared", fx_case_burst_vs_unshared, NULL},
    {"burst_uses_idle", fx_case_burst_uses_idle, NULL},
    {"quantum", fx_case_quantum, NULL},
    {"priority_takeover", fx_case_priority_takeover, NULL},
    {"dead_holder", fx_case_dead_holder, NULL},
    {"dead_holder_behind", fx_case_dead_holder_behind, NULL},
    {"hung_holder", fx_case_hung_holder, NULL},
    {"resize", fx_case_resize, NULL},
    {"spatial_caps", fx_case_spatial_caps, NULL},
    {"spatial_priority", fx_case_spatial_priority, NULL},
    {"capped_high", fx_case_capped_high, NULL},
    {"touch_after_now", fx_case_touch_after_now, NULL},
};
#define FX_NCASES (sizeof fx_cases / sizeof fx_cases[0])

/* Run case i; returns 1 when it counts as a failure. */
static int fx_run_case(size_t i)
{
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    fx_fails = 0;
    printf("%s\n", fx_cases[i].name);
    fx_cases[i].run();
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    const char *bug = fx_cases[i].known_bug;
    if (bug && fx_fails) printf("XFAIL %s (%.1f ms): known bug: %s\n", fx_cases[i].name, ms, bug);
    else if (bug)
        printf("XPASS %s (%.1f ms): the known bug no longer shows; unmark the case\n",
               fx_cases[i].name, ms);
    else printf("%s %s (%.1f ms)\n", fx_fails ? "FAIL" : "ok", fx_cases[i].name, ms);
    fflush(stdout);
    return bug ? !fx_fails : fx_fails != 0;
}

int main(int argc, char **argv)
{
    int failed = 0;
    if (argc == 2 && strcmp(argv[1], "--list") == 0) {
        for (size_t i = 0; i < FX_NCASES; i++) printf("%s\n", fx_cases[i].name);
        return 0;
    }
    for (int a = 1; a < argc; a++) {
        size_t i = 0;
        while (i < FX_NCASES && strcmp(fx_cases[i].name, argv[a]) != 0) i++;
        if (i == FX_NCASES) {
            fprintf(stderr, "no case %s (see --list)\n", argv[a]);
            return 2;
        }
    }
    if (argc == 1)
        for (size_t i = 0; i < FX_NCASES; i++) failed |= fx_run_case(i);
    for (int a = 1; a < argc; a++)
        for (size_t i = 0; i < FX_NCASES; i++)
            if (strcmp(fx_cases[i].name, argv[a]) == 0) failed |= fx_run_case(i);
    return failed;
}
