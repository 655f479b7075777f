/* track.c - what each live allocation of this process was charged, so a free gives back
 * exactly that, and a teardown everything it freed. An open-addressing table (linear probing,
 * backward-shift deletion) behind one mutex: allocations are rare next to kernel launches, and
 * frameworks cache memory anyway. Teardowns walk the whole table; they are rarer still. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "track.h"

#include "log.h"
#include "shm.h"

struct fx_entry {
    uint64_t key;
    uint64_t size;
    uint64_t owner;
    uint64_t ref;    /* what it refers to (fx_track_add_ref), 0 otherwise */
    uint16_t kind;   /* 0: empty slot */
    uint16_t marked; /* its owner's teardown is under way (fx_track_owner_mark) */
    uint32_t dev;
};

static struct fx_entry *fx_tab;
static size_t fx_cap, fx_len; /* fx_cap is a power of two */
static pthread_mutex_t fx_tab_mu = PTHREAD_MUTEX_INITIALIZER;

static size_t fx_slot(uint64_t key, uint32_t kind)
{
    uint64_t h = (key ^ ((uint64_t)kind << 59)) * 0x9e3779b97f4a7c15ULL;
    return (size_t)(h >> 20) & (fx_cap - 1);
}

static int fx_grow(void)
{
    size_t ncap = fx_cap ? fx_cap * 2 : 1024;
    struct fx_entry *old = fx_tab, *n = calloc(ncap, sizeof *n);
    size_t ocap = fx_cap;
    if (!n) return -1;
    fx_tab = n;
    fx_cap = ncap;
    for (size_t i = 0; i < ocap; i++) {
        if (!old[i].kind) continue;
        size_t s = fx_slot(old[i].key, old[i].kind);
        while (fx_tab[s].kind) s = (s + 1) & (fx_cap - 1);
        fx_tab[s] = old[i];
    }
    free(old);
    return 0;
}

static void fx_track_prefork(void)
{
    pthread_mutex_lock(&fx_tab_mu);
}

static void fx_track_postfork_parent(void)
{
    pthread_mutex_unlock(&fx_tab_mu);
}

/* The parent's allocations are charged to the parent; the child starts with none. */
static void fx_track_postfork_child(void)
{
    if (fx_tab) memset(fx_tab, 0, fx_cap * sizeof *fx_tab);
    fx_len = 0;
    pthread_mutex_init(&fx_tab_mu, NULL);
}

static pthread_once_t fx_track_once = PTHREAD_ONCE_INIT;

static void fx_track_init(void)
{
    pthread_atfork(fx_track_prefork, fx_track_postfork_parent, fx_track_postfork_child);
}

/* The slot of (kind, key), or the empty slot that ends its probe run. Mutex held, fx_cap > 0. */
static size_t fx_lookup(uint64_t key, uint32_t kind)
{
    size_t s = fx_slot(key, kind);
    while (fx_tab[s].kind && !(fx_tab[s].key == key && fx_tab[s].kind == kind))
        s = (s + 1) & (fx_cap - 1);
    return s;
}

/* Backward-shift delete: move later members of the probe run into the hole. Mutex held. */
static void fx_delete_at(size_t s)
{
    size_t hole = s, j = s;
    for (;;) {
        j = (j + 1) & (fx_cap - 1);
        if (!fx_tab[j].kind) break;
        size_t home = fx_slot(fx_tab[j].key, fx_tab[j].kind);
        /* j may move to hole iff home is not cyclically in (hole, j] */
        int stays = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (stays) continue;
        fx_tab[hole] = fx_tab[j];
        hole = j;
    }
    fx_tab[hole].kind = 0;
    fx_len--;
}

static struct fx_charge fx_add(int kind, uint64_t key, uint64_t size, uint32_t dev,
                               uint64_t owner, uint64_t ref)
{
    struct fx_charge displaced = {0, FX_NONE};
    if (dev == FX_NONE) return displaced;
    pthread_once(&fx_track_once, fx_track_init); /* before the first entry exists */
    pthread_mutex_lock(&fx_tab_mu);
    if ((fx_len + 1) * 2 > fx_cap && fx_grow() != 0) {
        pthread_mutex_unlock(&fx_tab_mu);
        /* The charge stays (we cannot know when to release it): safe for the quota. */
        FX_ERROR("out of host memory tracking an allocation; its charge stays until exit");
        return displaced;
    }
    size_t s = fx_lookup(key, (uint32_t)kind);
    if (fx_tab[s].kind) displaced = (struct fx_charge){fx_tab[s].size, fx_tab[s].dev};
    else fx_len++;
    fx_tab[s] = (struct fx_entry){key, size, owner, ref, (uint16_t)kind, 0, dev};
    pthread_mutex_unlock(&fx_tab_mu);
    return displaced;
}

struct fx_charge fx_track_add(int kind, uint64_t key, uint64_t size, uint32_t dev,
                              uint64_t owner)
{
    return fx_add(kind, key, size, dev, owner, 0);
}

struct fx_charge fx_track_add_ref(int kind, uint64_t key, uint64_t size, uint32_t dev,
                                  uint64_t ref)
{
    return fx_add(kind, key, size, dev, 0, ref);
}

int fx_track_get(int kind, uint64_t key, uint64_t *size, uint32_t *dev)
{
    int rc = -1;
    pthread_mutex_lock(&fx_tab_mu);
    if (fx_cap != 0) {
        size_t s = fx_lookup(key, (uint32_t)kind);
        if (fx_tab[s].kind) {
            *size = fx_tab[s].size;
            *dev = fx_tab[s].dev;
            rc = 0;
        }
    }
    pthread_mutex_unlock(&fx_tab_mu);
    return rc;
}

int fx_track_set_size(int kind, uint64_t key, uint64_t size, uint64_t *old)
{
    int rc = -1;
    pthread_mutex_lock(&fx_tab_mu);
    if (fx_cap != 0) {
        size_t s = fx_lookup(key, (uint32_t)kind);
        if (fx_tab[s].kind) {
            *old = fx_tab[s].size;
            fx_tab[s].size = size;
            rc = 0;
        }
    }
    pthread_mutex_unlock(&fx_tab_mu);
    return rc;
}

unsigned fx_track_take_range(int kind, uint64_t lo, uint64_t hi, uint64_t *refs, unsigned max)
{
    unsigned n = 0;
    pthread_mutex_lock(&fx_tab_mu);
    /* As in fx_track_owner_forget: a deletion may shift a later entry into slot i. */
    for (size_t i = 0; i < fx_cap && n < max;) {
        struct fx_entry *e = &fx_tab[i];
        if (e->kind != (uint32_t)kind || e->key < lo || e->key >= hi) {
            i++;
            continue;
        }
        refs[n++] = e->ref;
        fx_delete_at(i);
    }
    pthread_mutex_unlock(&fx_tab_mu);
    return n;
}

unsigned fx_track_count_ref(int kind, uint64_t ref)
{
    unsigned n = 0;
    pthread_mutex_lock(&fx_tab_mu);
    for (size_t i = 0; i < fx_cap; i++)
        n += fx_tab[i].kind == (uint32_t)kind && fx_tab[i].ref == ref;
    pthread_mutex_unlock(&fx_tab_mu);
    return n;
}

unsigned fx_track_keys(int kind, uint64_t *keys, unsigned max)
{
    unsigned n = 0;
    pthread_mutex_lock(&fx_tab_mu);
    for (size_t i = 0; i < fx_cap; i++) {
        if (fx_tab[i].kind != (uint32_t)kind) continue;
        if (n < max) keys[n] = fx_tab[i].key;
        n++;
    }
    pthread_mutex_unlock(&fx_tab_mu);
    return n;
}

int fx_track_take(int kind, uint64_t key, uint64_t *size, uint32_t *dev, uint64_t *owner)
{
    int rc = -1;
    pthread_mutex_lock(&fx_tab_mu);
    if (fx_cap == 0) goto out;
    size_t s = fx_lookup(key, (uint32_t)kind);
    if (!fx_tab[s].kind) goto out;
    *size = fx_tab[s].size;
    *dev = fx_tab[s].dev;
    *owner = fx_tab[s].owner;
    rc = 0;
    fx_delete_at(s);
out:
    pthread_mutex_unlock(&fx_tab_mu);
    return rc;
}

int fx_track_find(int kind, uint64_t key, uint32_t *dev)
{
    uint64_t size;
    return fx_track_get(kind, key, &size, dev);
}

static void fx_owner_set_mark(uint64_t owner, uint16_t from, uint16_t to)
{
    pthread_mutex_lock(&fx_tab_mu);
    for (size_t i = 0; i < fx_cap; i++)
        if (fx_tab[i].kind && fx_tab[i].owner == owner && fx_tab[i].marked == from)
            fx_tab[i].marked = to;
    pthread_mutex_unlock(&fx_tab_mu);
}

void fx_track_owner_mark(uint64_t owner)
{
    fx_owner_set_mark(owner, 0, 1);
}

void fx_track_owner_keep(uint64_t owner)
{
    fx_owner_set_mark(owner, 1, 0);
}

void fx_track_owner_forget(uint64_t owner, uint64_t freed[FLEXAI_MAX_DEVICES])
{
    pthread_mutex_lock(&fx_tab_mu);
    /* A deletion may shift a later entry into slot i: look at i again before moving on. Only
     * entries already looked at (wrapped around from the table's start) can move behind i. */
    for (size_t i = 0; i < fx_cap;) {
        struct fx_entry *e = &fx_tab[i];
        if (!e->kind || e->owner != owner || !e->marked) {
            i++;
            continue;
        }
        if (e->dev < FLEXAI_MAX_DEVICES)
            freed[e->dev] = freed[e->dev] > UINT64_MAX - e->size ? UINT64_MAX
                                                                 : freed[e->dev] + e->size;
        fx_delete_at(i);
    }
    pthread_mutex_unlock(&fx_tab_mu);
}

unsigned fx_track_count(int kind, uint32_t dev)
{
    unsigned n = 0;
    pthread_mutex_lock(&fx_tab_mu);
    for (size_t i = 0; i < fx_cap; i++)
        n += fx_tab[i].kind == (uint32_t)kind && fx_tab[i].dev == dev;
    pthread_mutex_unlock(&fx_tab_mu);
    return n;
}
