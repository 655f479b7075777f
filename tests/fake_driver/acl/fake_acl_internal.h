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

/* aclInit was called (and no aclFinalize since). */
FAKE_HIDDEN int fake_acl_ready(void);
/* Visible devices: count and the physical index of user ordinal i (-1: none). */
FAKE_HIDDEN int fake_acl_count(void);
FAKE_HIDDEN int fake_acl_physical(int ordinal);
/* The calling thread's current device (aclrtSetDevice), -1 without one. */
FAKE_HIDDEN int fake_acl_current(void);

/* Queue a piece of work of `ns` on `stream` (NULL: the current device's default stream); when it
 * has run, `zero_len` bytes at `zero` are cleared (an aclnn operator's effect). */
FAKE_HIDDEN aclError fake_acl_queue_work(aclrtStream stream, int64_t ns, void *zero,
                                         size_t zero_len);
/* Streams forget the device when it is reset (fake_acl_exec.c). */
FAKE_HIDDEN void fake_acl_exec_reset(int ordinal);

/* The one entry of the runtime libopapi.so uses (exported, never hooked). */
FAKE_ACL_EXPORT aclError fake_acl_submit(aclrtStream stream, int64_t ns, void *zero,
                                         size_t zero_len);

#endif
