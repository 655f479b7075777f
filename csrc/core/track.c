/* track.c - what each live allocation of this process was charged, so a free gives back
 * exactly that. An open-addressing table (linear probing, backward-shift deletion) behind one
 * mutex: allocations are rare next to kernel launches, and frameworks cache memory anyway. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "track.h"

#include "log.h"
#include "shm.h"

struct fx_entry {
    uint64_t key;
    uint64_t size;
    uint32_t kind; /* 0: empty slot */
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

void fx_track_add(int kind, uint64_t key, uint64_t size, uint32_t dev)
{
    if (dev == FX_NONE) return;
    pthread_once(&fx_track_once, fx_track_init); /* before the first entry exists */
    pthread_mutex_lock(&fx_tab_mu);
    if ((fx_len + 1) * 2 > fx_cap && fx_grow() != 0) {
        pthread_mutex_unlock(&fx_tab_mu);
        /* The charge stays (we cannot know when to release it): safe for the quota. */
        FX_ERROR("out of host memory tracking an allocation; its charge stays until exit");
        return;
    }
    size_t s = fx_slot(key, (uint32_t)kind);
    while (fx_tab[s].kind && !(fx_tab[s].key == key && fx_tab[s].kind == (uint32_t)kind))
        s = (s + 1) & (fx_cap - 1);
    if (!fx_tab[s].kind) fx_len++;
    fx_tab[s] = (struct fx_entry){key, size, (uint32_t)kind, dev};
    pthread_mutex_unlock(&fx_tab_mu);
}

int fx_track_take(int kind, uint64_t key, uint64_t *size, uint32_t *dev)
{
    int rc = -1;
    pthread_mutex_lock(&fx_tab_mu);
    if (fx_cap == 0) goto out;
    size_t s = fx_slot(key, (uint32_t)kind);
    while (fx_tab[s].kind && !(fx_tab[s].key == key && fx_tab[s].kind == (uint32_t)kind))
        s = (s + 1) & (fx_cap - 1);
    if (!fx_tab[s].kind) goto out;
    *size = fx_tab[s].size;
    *dev = fx_tab[s].dev;
    rc = 0;
    /* backward-shift delete: move later members of the probe run into the hole */
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
out:
    pthread_mutex_unlock(&fx_tab_mu);
    return rc;
}
