/*
 * fake_opapi.c - the stand-in libopapi.so: aclTensor and one aclnn operator, aclnnInplaceZero,
 * in its two phases as the documentation gives them. The first phase checks the tensor and
 * makes a single-use executor (no workspace needed); the second queues the work on the stream
 * through the stand-in runtime (fake_acl_submit, not a hooked name) and frees the executor.
 * The operator clears the tensor's bytes when it has run and lasts 10 ns per byte (the stand-in's
 * HBM moves 100 MB/s), so a test picks an operator's duration by its tensor's size.
 * Must never be shipped as, or mistaken for, the real operator library.
 */
#include <stdlib.h>
#include <string.h>

#include "fake_acl_internal.h"

struct aclTensor {
    void *data;
    uint64_t bytes;
};

struct aclOpExecutor {
    struct aclTensor t;
};

/* Bytes per element of the documented aclDataType values; others count as 4. */
static uint64_t dtype_size(aclDataType t)
{
    switch (t) {
    case 1: case 6: case 7: case 27: return 2; /* FLOAT16, INT16, UINT16, BF16 */
    case 2: case 4: case 12: return 1;         /* INT8, UINT8, BOOL */
    case 9: case 10: case 11: return 8;        /* INT64, UINT64, DOUBLE */
    default: return 4;
    }
}

FAKE_ACL_EXPORT aclTensor *aclCreateTensor(const int64_t *viewDims, uint64_t viewDimsNum,
                                           aclDataType dataType, const int64_t *stride,
                                           int64_t offset, aclFormat format,
                                           const int64_t *storageDims, uint64_t storageDimsNum,
                                           void *tensorData)
{
    (void)viewDims, (void)viewDimsNum, (void)stride, (void)offset, (void)format;
    if (!storageDims && storageDimsNum) return NULL;
    uint64_t n = 1;
    for (uint64_t i = 0; i < storageDimsNum; i++) {
        if (storageDims[i] < 0) return NULL;
        n *= (uint64_t)storageDims[i];
    }
    struct aclTensor *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->data = tensorData;
    t->bytes = n * dtype_size(dataType);
    return t;
}

FAKE_ACL_EXPORT aclnnStatus aclDestroyTensor(const aclTensor *tensor)
{
    free((void *)tensor);
    return ACLNN_SUCCESS;
}

FAKE_ACL_EXPORT aclnnStatus aclnnInplaceZeroGetWorkspaceSize(aclTensor *selfRef,
                                                             uint64_t *workspaceSize,
                                                             aclOpExecutor **executor)
{
    if (!selfRef || !workspaceSize || !executor) return ACLNN_ERR_PARAM_NULLPTR;
    if (!selfRef->data && selfRef->bytes) return ACLNN_ERR_PARAM_INVALID;
    struct aclOpExecutor *e = calloc(1, sizeof *e);
    if (!e) return ACLNN_ERR_PARAM_INVALID;
    e->t = *selfRef;
    *workspaceSize = 0;
    *executor = e;
    return ACLNN_SUCCESS;
}

FAKE_ACL_EXPORT aclnnStatus aclnnInplaceZero(void *workspace, uint64_t workspaceSize,
                                             aclOpExecutor *executor, aclrtStream stream)
{
    (void)workspace, (void)workspaceSize;
    if (!executor) return ACLNN_ERR_PARAM_NULLPTR;
    struct aclTensor t = executor->t;
    free(executor); /* single use, as the library's executors are by default */
    return fake_acl_submit(stream, (int64_t)t.bytes * 10, t.data, (size_t)t.bytes);
}
