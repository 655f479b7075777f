/* handles.c - client-side handles: contexts, streams, events, modules, libraries, kernels and
 * functions are numbered here, so creating one needs no round trip (the worker learns the id
 * with the creation request and maps it to the driver's handle). A handle given to the program
 * is (kind << 32 | id): never 0, 1 or 2 (the special streams), and a handle of the wrong kind or
 * a destroyed one is recognised without dereferencing anything the program passed.
 *
 * It must never hand out an id at or above FX_R_MAX_IDS (the worker refuses those) and never let
 * two live objects of a kind share an id; ids of destroyed objects are given again, which is
 * safe because the worker sees the destruction before the next creation (one ordered stream).
 * Also the calling thread's context stack (thread-local, as in the driver).
 */
#include <stdlib.h>
#include <string.h>

#include "client.h"

#define STACK_MAX 64

struct table {
    struct fxc_obj **slot;
    uint32_t cap, next; /* next never-used id */
    uint32_t *free_ids;
    uint32_t nfree, free_cap;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct table tables[FXC_KINDS];

static _Thread_local uint32_t ctx_stack[STACK_MAX];
static _Thread_local int ctx_depth;

void *fxc_handle(enum fxc_kind kind, uint32_t id) {
    return (void *)(uintptr_t)(((uint64_t)kind << 32) | id);
}

static void obj_free(struct fxc_obj *o) {
    free(o->poff);
    free(o->psize);
    free(o->name);
    free(o);
}

static int place_locked(struct table *t, uint32_t id, struct fxc_obj *o) {
    if (id >= t->cap) {
        uint32_t cap = t->cap ? t->cap : 64;
        while (cap <= id)
            cap *= 2;
        struct fxc_obj **s = realloc(t->slot, cap * sizeof(*s));
        if (s == NULL)
            return -1;
        memset(s + t->cap, 0, (cap - t->cap) * sizeof(*s));
        t->slot = s;
        t->cap = cap;
    }
    t->slot[id] = o;
    o->id = id;
    return 0;
}

struct fxc_obj *fxc_obj_new(enum fxc_kind kind) {
    struct fxc_obj *o = calloc(1, sizeof(*o));
    if (o == NULL)
        return NULL;
    pthread_mutex_lock(&mu);
    struct table *t = &tables[kind];
    if (t->next < FX_R_FIRST_ID)
        t->next = FX_R_FIRST_ID;
    uint32_t id = t->nfree ? t->free_ids[--t->nfree] : t->next;
    if (id >= FX_R_MAX_IDS || place_locked(t, id, o) != 0) {
        if (id != t->next)
            t->nfree++; /* give the reused id back */
        pthread_mutex_unlock(&mu);
        free(o);
        return NULL;
    }
    if (id == t->next)
        t->next++;
    pthread_mutex_unlock(&mu);
    return o;
}

/* Primary contexts have fixed ids (device + 1) and are made when the device count is known. */
static struct fxc_obj *primary_locked(uint32_t id) {
    struct table *t = &tables[FXC_CTX];
    if (id == 0 || id > (uint32_t)fxc_device_count || id > FX_R_MAX_DEVICES)
        return NULL;
    if (id < t->cap && t->slot[id] != NULL)
        return t->slot[id];
    struct fxc_obj *o = calloc(1, sizeof(*o));
    if (o == NULL || place_locked(t, id, o) != 0) {
        free(o);
        return NULL;
    }
    o->dev = (int)id - 1;
    return o;
}

struct fxc_obj *fxc_obj_by_id(enum fxc_kind kind, uint32_t id) {
    struct fxc_obj *o = NULL;
    pthread_mutex_lock(&mu);
    struct table *t = &tables[kind];
    if (kind == FXC_CTX && id > 0 && id <= FX_R_MAX_DEVICES)
        o = primary_locked(id);
    else if (id < t->cap)
        o = t->slot[id];
    pthread_mutex_unlock(&mu);
    return o;
}

struct fxc_obj *fxc_obj_get(enum fxc_kind kind, const void *handle) {
    uint64_t v = (uint64_t)(uintptr_t)handle;
    if ((v >> 32) != (uint64_t)kind)
        return NULL;
    return fxc_obj_by_id(kind, (uint32_t)v);
}

void fxc_obj_drop(enum fxc_kind kind, uint32_t id) {
    pthread_mutex_lock(&mu);
    struct table *t = &tables[kind];
    struct fxc_obj *o = id < t->cap ? t->slot[id] : NULL;
    if (o != NULL) {
        t->slot[id] = NULL;
        if (id >= FX_R_FIRST_ID) { /* primaries keep their ids */
            if (t->nfree == t->free_cap) {
                uint32_t cap = t->free_cap ? t->free_cap * 2 : 64;
                uint32_t *f = realloc(t->free_ids, cap * sizeof(*f));
                if (f != NULL) {
                    t->free_ids = f;
                    t->free_cap = cap;
                }
            }
            if (t->nfree < t->free_cap) /* else the id is simply never reused */
                t->free_ids[t->nfree++] = id;
        }
    }
    pthread_mutex_unlock(&mu);
    if (o != NULL)
        obj_free(o);
}

void fxc_handles_reset(void) {
    for (int k = 0; k < FXC_KINDS; k++) {
        struct table *t = &tables[k];
        for (uint32_t i = 0; i < t->cap; i++)
            if (t->slot[i] != NULL)
                obj_free(t->slot[i]);
        free(t->slot);
        free(t->free_ids);
        memset(t, 0, sizeof(*t));
    }
    pthread_mutex_init(&mu, NULL);
    ctx_depth = 0;
}

/* ---- the calling thread's context stack --------------------------------------------------- */

uint32_t fxc_ctx_current(void) {
    return ctx_depth > 0 ? ctx_stack[ctx_depth - 1] : 0;
}

void fxc_ctx_set(uint32_t id) {
    if (ctx_depth == 0 && id != 0)
        ctx_stack[ctx_depth++] = id;
    else if (ctx_depth > 0 && id == 0)
        ctx_depth--; /* cuCtxSetCurrent(NULL) leaves the stack one shorter, as the driver does */
    else if (ctx_depth > 0)
        ctx_stack[ctx_depth - 1] = id;
}

int fxc_ctx_push(uint32_t id) {
    if (ctx_depth == STACK_MAX)
        return -1;
    ctx_stack[ctx_depth++] = id;
    return 0;
}

uint32_t fxc_ctx_pop(void) {
    return ctx_depth > 0 ? ctx_stack[--ctx_depth] : 0;
}

void fxc_ctx_forget(uint32_t id) {
    int j = 0;
    for (int i = 0; i < ctx_depth; i++)
        if (ctx_stack[i] != id)
            ctx_stack[j++] = ctx_stack[i];
    ctx_depth = j;
}

CUresult fxc_stream_id(CUstream s, int per_thread, uint32_t *id) {
    if (s == NULL) {
        *id = per_thread ? FX_R_STREAM_PER_THREAD : FX_R_STREAM_NULL;
        return CUDA_SUCCESS;
    }
    if (s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD) {
        *id = s == CU_STREAM_LEGACY ? FX_R_STREAM_LEGACY : FX_R_STREAM_PER_THREAD;
        return CUDA_SUCCESS;
    }
    struct fxc_obj *o = fxc_obj_get(FXC_STREAM, s);
    if (o == NULL)
        return CUDA_ERROR_INVALID_HANDLE;
    *id = o->id;
    return CUDA_SUCCESS;
}
