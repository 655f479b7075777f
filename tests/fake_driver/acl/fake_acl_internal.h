/*
 * fake_acl_internal.h - state shared by the files of the stand-in libascendcl.so (a conformance
 * stand-in of Huawei's Ascend runtime, written from the public API documentation for the tests;
 * it must never be mistaken for, or shipped as, the real runtime).
 *
 * The stand-in's NPUs are the simulated node's devices (FLEXAI_SIM_DEVICES, FLEXAI_SIM_MEMORY,
 * FLEXAI_SIM_KERNEL_US, as for the simulated GPUs, fake_common.c) with state files of their own
 * (prefix "npu-"): HBM is host memory, charged to the node's shared account; work occupies the
 * shared device time (fake_sim.c). ASCEND_RT_VISIBLE_DEVICES selects and orders the devices.
 *
 * Interposition: libflexai.so is LD_PRELOADed and exports acl* names; the stand-in never calls
 * its own exported names (that would reach the shim's wrappers): shared logic lives in hidden
 * helpers. libopapi.so reaches the runtime through fake_acl_submit, which flexai does not hook.
 */
#ifndef FLEXAI_FAKE_ACL_INTERNAL_H
#define FLEXAI_FAKE_ACL_INTERNAL_H

#include <pthread.h>
#include <stdint.h>

#include "acl_api.h"
#include "fake.h"

#define FAKE_ACL_EXPORT __attribute__((visibility("default")))

/* A context: a device's default one (aclrtSetDevice) or an explicit one (aclrtCreateContext).
 * Released ones stay allocated, not alive (fake_acl_ctx.c). */
struct fake_ctx {
    int ordinal;    /* the device (user ordinal) */
    int is_default;
    int alive;
};

/* A model run instance: the work captured into it (fake_acl_exec.c queues it there). */
struct fake_model_ri {
    int64_t ns; /* the captured work's summed duration */
};

/* aclInit was called (and no aclFinalize since). */
FAKE_HIDDEN int fake_acl_ready(void);
/* Visible devices: count and the physical index of user ordinal i (-1: none). */
FAKE_HIDDEN int fake_acl_count(void);
FAKE_HIDDEN int fake_acl_physical(int ordinal);
/* The calling thread's current device (its context's), -1 without one. */
FAKE_HIDDEN int fake_acl_current(void);
/* The calling thread's context, NULL without a live one. */
FAKE_HIDDEN struct fake_ctx *fake_acl_current_ctx(void);

/* Queue a piece of work of `ns` on `stream` (NULL: the current device's default stream); when it
 * has run, `zero_len` bytes at `zero` are cleared (an aclnn operator's effect). */
FAKE_HIDDEN aclError fake_acl_queue_work(aclrtStream stream, int64_t ns, void *zero,
                                         size_t zero_len);
/* Queue `ns` of work on the current context's default stream and wait for it (a synchronous
 * call's work). */
FAKE_HIDDEN aclError fake_acl_queue_sync(int64_t ns);
/* Capture: the model `stream` captures into (NULL: none; the default stream never captures);
 * swap: begin (in: the new model, refused while capturing) or end (in NULL: *out gets the
 * model, refused when not capturing). 0 or -1. */
FAKE_HIDDEN struct fake_model_ri *fake_acl_capturing(aclrtStream stream);
FAKE_HIDDEN int fake_acl_capture_swap(aclrtStream stream, struct fake_model_ri *in,
                                      struct fake_model_ri **out);
/* A context released: its streams (its work done first, fake_acl_exec.c) and its linear memory
 * (fake_acl.c) go. */
FAKE_HIDDEN void fake_acl_exec_release(struct fake_ctx *c);
FAKE_HIDDEN void fake_acl_mem_release(struct fake_ctx *c);
/* Device time of one kernel launched with function `fn` and arguments `args` (sleep_us: the
 * microseconds in its first 4 bytes; others FLEXAI_SIM_KERNEL_US), in ns. */
FAKE_HIDDEN int64_t fake_acl_kernel_ns(const void *fn, const void *args, size_t size);
FAKE_HIDDEN int64_t fake_acl_default_ns(void);

/* The one entry of the runtime libopapi.so uses (exported, never hooked). */
FAKE_ACL_EXPORT aclError fake_acl_submit(aclrtStream stream, int64_t ns, void *zero,
                                         size_t zero_len);

#endif
