/* gate.h - the compute gate every submission of work passes (kernels, cooperative kernels,
 * graphs): a lease from timeshare.c, and a bound on the work this process keeps in flight,
 * measured with the backend's events. Vendor-free: the hook layer calls
 *
 *     struct fx_gate *g = fx_gate_enter(queue, flags, &status);
 *     if (status != FLEXAI_OK) return vendor_error(status);
 *     rc = real_launch(...);                       (the gate's mutex is not held here)
 *     fx_gate_leave(g, rc == success, queue, flags, FX_WORK_KERNEL or FX_WORK_GRAPH);
 *
 * fx_gate_enter returns NULL when the launch goes straight to the driver (nothing scheduled on
 * this process's devices), else the device's gate, which counts the launch as on its way until
 * fx_gate_leave. When the node's state cannot be used (a lock held too long,
 * a truncated file), *status says why and the launch must fail: work never runs unlimited.
 */
#ifndef FX_GATE_H
#define FX_GATE_H

#include "backend.h"

struct fx_gate;

/* What a launch submits: its GPU time is estimated per kind (a graph is many kernels). */
enum fx_work { FX_WORK_KERNEL = 0, FX_WORK_GRAPH = 1, FX_WORK_KINDS = 2 };

struct fx_gate *fx_gate_enter(fx_queue_t queue, unsigned flags, int32_t *status);
void fx_gate_leave(struct fx_gate *g, int submitted, fx_queue_t queue, unsigned flags,
                   enum fx_work kind);

/* Handles going away, told by the hooks so the gate never uses them afterwards.
 * A queue about to be destroyed: its unmarked work is closed with a mark now (while the queue
 * can still take one). A context about to be destroyed (alive: its events can still be
 * destroyed) or already gone with everything in it (alive 0: they are only dropped): the gate
 * forgets its events, marks and queues, and charges their unmeasured work at its estimate. */
void fx_gate_forget_queue(fx_queue_t queue);
void fx_gate_forget_context(fx_ctx_t ctx, int alive);

#endif
