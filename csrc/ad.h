/* pyautodiff C core: public API.
 *
 * Conventions (one rule each, so bindings never guess):
 *  - Tensors are integer handles (int64_t > 0). A handle encodes its tape, its arena slot and the
 *    slot's generation, so a stale or foreign handle is detected and reported, never dereferenced.
 *  - Functions that create a tensor return its handle, or a negative ad_status on failure.
 *    Other fallible functions return an ad_status (AD_OK == 0).
 *  - ad_last_error() gives the message of the calling thread's last failure.
 *  - Every thread records onto its own tape, created on first use. A tensor may be read,
 *    released and have its grad read on any thread; it takes part in ops only on its own thread.
 *  - No function aborts on caller input: bad shapes, axes, handles and out-of-memory are statuses.
 */
#ifndef AD_H
#define AD_H

#include <stdint.h>
#include <stddef.h>

#define AD_MAXDIM 8

typedef enum {
    AD_OK = 0,
    AD_ERR_VALUE = 1,    /* bad shape, axis, size: Python ValueError */
    AD_ERR_TYPE = 2,     /* bad dtype or op kind: TypeError */
    AD_ERR_RUNTIME = 3,  /* misuse of the graph (released graph, no grad): RuntimeError */
    AD_ERR_MEMORY = 4,   /* allocation failed: MemoryError */
    AD_ERR_INDEX = 5,    /* index out of range: IndexError */
    AD_ERR_HANDLE = 6,   /* stale, foreign or malformed handle: RuntimeError */
    AD_ERR_FLOAT = 7,    /* NaN produced while anomaly detection is on: FloatingPointError */
    AD_ERR_LINALG = 8    /* singular or not positive-definite matrix, not a matrix: numpy.linalg.LinAlgError */
} ad_status;

typedef enum { AD_F32 = 0, AD_F64 = 1 } ad_dtype;

/* Op codes: the tape stores these, so a recorded node can be re-executed from code + inputs. */
typedef enum {
    AD_OP_LEAF = 0,
    /* unary (with up to two constants: x + c, leaky_relu's slope, ...), then binary with NumPy
     * broadcasting, one per row of pyautodiff/opdefs.py */
    /* BEGIN elementwise ops, generated from pyautodiff/opdefs.py */
    AD_OP_NEG, AD_OP_EXP, AD_OP_LOG, AD_OP_SQRT, AD_OP_ABS, AD_OP_SIN, AD_OP_COS, AD_OP_TANH, AD_OP_SIGMOID, AD_OP_RELU, AD_OP_LOG1P, AD_OP_EXPM1, AD_OP_LOG2, AD_OP_LOG10, AD_OP_EXP2, AD_OP_SQUARE, AD_OP_RECIPROCAL, AD_OP_TAN, AD_OP_ARCSIN, AD_OP_ARCCOS, AD_OP_ARCTAN, AD_OP_SINH, AD_OP_COSH, AD_OP_ARCSINH, AD_OP_ARCCOSH, AD_OP_ARCTANH, AD_OP_ERF, AD_OP_ERFC, AD_OP_SOFTPLUS, AD_OP_GELU, AD_OP_GELU_TANH, AD_OP_SILU, AD_OP_LEAKY_RELU, AD_OP_ELU, AD_OP_HARDTANH, AD_OP_SIGN, AD_OP_FLOOR, AD_OP_CEIL, AD_OP_ROUND, AD_OP_TRUNC, AD_OP_ADD_S, AD_OP_MUL_S, AD_OP_RSUB_S, AD_OP_DIV_S, AD_OP_RDIV_S, AD_OP_POW_S, AD_OP_RPOW_S,
    AD_OP_UNARY_FIRST = AD_OP_NEG, AD_OP_UNARY_LAST = AD_OP_RPOW_S,
    AD_OP_ADD, AD_OP_SUB, AD_OP_MUL, AD_OP_DIV, AD_OP_POW, AD_OP_MAXIMUM, AD_OP_MINIMUM, AD_OP_LOGADDEXP, AD_OP_ARCTAN2, AD_OP_HYPOT, AD_OP_FLOOR_DIVIDE, AD_OP_MOD, AD_OP_MUL_SAFE,
    AD_OP_BINARY_FIRST = AD_OP_ADD, AD_OP_BINARY_LAST = AD_OP_MUL_SAFE,
    /* END elementwise ops */
    /* reductions */
    AD_OP_SUM, AD_OP_MEAN, AD_OP_MAX, AD_OP_MIN,
    /* linear algebra and layout */
    AD_OP_MATMUL, AD_OP_RESHAPE, AD_OP_TRANSPOSE, AD_OP_BROADCAST_TO, AD_OP_CAST,
    /* indexing and selection (kernels/index.c) */
    AD_OP_GATHER, AD_OP_CONCATENATE, AD_OP_STACK, AD_OP_WHERE, AD_OP_CLIP,
    /* normalisers over axes (kernels/softmax.c) */
    AD_OP_LOGSUMEXP, AD_OP_SOFTMAX, AD_OP_LOG_SOFTMAX,
    /* out = zeros(shape), out.flat[index[i]] += x.flat[i]: gather's VJP (kernels/index.c) */
    AD_OP_SCATTER_ADD,
    /* basic indexing: a strided view of x copied (kernels/index.c) */
    AD_OP_SLICE,
    /* convolution (kernels/conv.c): unfold (im2col) and fold (col2im), each the other's adjoint;
     * conv2d of an image by a filter bank (kernels/conv2d.c) */
    AD_OP_UNFOLD, AD_OP_FOLD, AD_OP_CONV2D,
    /* issue 17, reductions and scans: the linear recurrence under cumsum, cumprod and prod
     * (kernels/scan.c) */
    AD_OP_SCAN,
    /* issue 17, linear algebra on LAPACK (kernels/lapack.c): X = A^-1 B (inv is solve(A, I)),
     * log|det A| or det A, the Cholesky factor; the singular values, or the SVD packed in one output */
    AD_OP_SOLVE, AD_OP_LOGDET, AD_OP_CHOLESKY, AD_OP_SVD,
    /* a custom function: its rules live in the bindings (ad_custom, csrc/custom.c) */
    AD_OP_CUSTOM,
    AD_OP_COUNT
} ad_op;

typedef struct {
    int dtype;                 /* ad_dtype */
    int ndim;
    int64_t shape[AD_MAXDIM];
    int64_t size;              /* number of elements */
    void *data;                /* contiguous C-order values; valid while the handle is held */
    int requires_grad;
    int is_leaf;
    int graph_released;        /* backward() without retain_graph went through this node */
} ad_info_t;

typedef struct {
    int64_t live_nodes;        /* nodes held by this thread's tape */
    int64_t live_bytes;        /* bytes of node records and value/adjoint buffers in use */
    int64_t pooled_bytes;      /* freed buffers kept for reuse (bounded) */
    int64_t tape_length;       /* entries in the creation-order tape, incl. not yet compacted */
} ad_stats_t;

/* Message of the calling thread's last error. */
const char *ad_last_error(void);

/* New leaf from contiguous data (copied); data NULL gives zeros. */
int64_t ad_tensor_new(int dtype, int ndim, const int64_t *shape, const void *data, int requires_grad);
/* New leaf filled with value. */
int64_t ad_full(int dtype, int ndim, const int64_t *shape, double value, int requires_grad);
/* Add / drop one reference held by the caller; the node (and any graph only it kept) is freed at zero. */
int ad_retain(int64_t h);
int ad_release(int64_t h);
/* Shape, dtype, data pointer and flags of a tensor. */
int ad_info(int64_t h, ad_info_t *out);
/* Mark a leaf as requiring grad (or not). */
int ad_set_requires_grad(int64_t h, int flag);
/* New leaf with a copy of h's values and no graph. */
int64_t ad_detach(int64_t h);

/* Ops. Each computes its value now and, when grad mode is on and an input requires grad,
 * records a node for the backward sweep. */
/* An elementwise op of one tensor and up to two constants (x + c: c0 = c; leaky_relu: c0 = the
 * slope; hardtanh: c0, c1 = the bounds; ops without constants ignore them). */
int64_t ad_unary(int op, int64_t x, double c0, double c1);
int64_t ad_binary(int op, int64_t a, int64_t b);
/* naxes < 0 reduces every axis; axes may be negative; duplicates are an error. */
int64_t ad_reduce(int op, int64_t x, int naxes, const int64_t *axes, int keepdims);
int64_t ad_matmul(int64_t a, int64_t b);
/* One entry of shape may be -1. */
int64_t ad_reshape(int64_t x, int ndim, const int64_t *shape);
/* naxes < 0 reverses the axes. */
int64_t ad_transpose(int64_t x, int naxes, const int64_t *perm);
int64_t ad_broadcast_to(int64_t x, int ndim, const int64_t *shape);
int64_t ad_cast(int64_t x, int dtype);
/* Advanced indexing: out, shaped `shape`, is prod(shape) / block blocks of `block` consecutive
 * elements, block i = x.flat[index[i] : index[i] + block] (block 1: one element per index). The
 * VJP scatter-adds, so repeated indices accumulate. A block reaching outside x is AD_ERR_INDEX;
 * a block that does not divide prod(shape) is AD_ERR_VALUE. */
int64_t ad_gather(int64_t x, int ndim, const int64_t *shape, const int64_t *index, int64_t block);
/* Basic indexing: out[i_0, ..., i_n] = x.flat[offset + sum_d i_d * strides[d]] (strides in
 * elements, any sign; what NumPy's view of the index has). A view reaching outside x is
 * AD_ERR_INDEX. */
int64_t ad_slice(int64_t x, int ndim, const int64_t *shape, int64_t offset, const int64_t *strides);
/* Basic indexing from the index as written, x[part_0, ..., part_{n-1}] with NumPy's rules:
 * each part is four int64 {kind, a, b, c}. AD_INDEX_INT: a is the index (negative counts from
 * the end); AD_INDEX_SLICE: a:b:c, bounds clamped as Python's slice.indices does, c != 0, with
 * AD_INDEX_NO_START / AD_INDEX_NO_STOP or'ed into kind for an omitted bound (a or b is then
 * ignored); AD_INDEX_NEWAXIS (None) and AD_INDEX_ELLIPSIS ignore a, b, c. NumPy's errors: an
 * index out of range, a second Ellipsis or more indices than axes are AD_ERR_INDEX, step 0 or an
 * unknown kind AD_ERR_VALUE. The result is a copy recorded as ad_slice's. */
enum { AD_INDEX_INT = 0, AD_INDEX_SLICE = 1, AD_INDEX_NEWAXIS = 2, AD_INDEX_ELLIPSIS = 3,
       AD_INDEX_NO_START = 4, AD_INDEX_NO_STOP = 8 };
int64_t ad_index(int64_t x, int nparts, const int64_t *parts);
/* NumPy concatenate (new_axis == 0) or stack (new_axis == 1) of n tensors along axis. */
int64_t ad_concatenate(int n, const int64_t *xs, int64_t axis, int new_axis);
/* cond ? a : b with cond (bytes, 0 or 1, C order) broadcasting against a and b. */
int64_t ad_where(int cond_ndim, const int64_t *cond_shape, const uint8_t *cond, int64_t a, int64_t b);
/* min(max(x, lo), hi); the gradient passes on lo <= x <= hi (boundaries included), 0 outside. */
int64_t ad_clip(int64_t x, double lo, double hi);
/* logsumexp / softmax / log_softmax over axes (naxes < 0: all), max-shifted so +-1000 stays finite;
 * keepdims applies to logsumexp only. */
int64_t ad_softmax(int op, int64_t x, int naxes, const int64_t *axes, int keepdims);
/* zeros of `shape` with block i of x (x.size / block blocks of `block` consecutive elements)
 * added at out.flat[index[i] : index[i] + block] (repeats accumulate; a block reaching outside
 * the result is AD_ERR_INDEX): the VJP of ad_gather, whose VJP it is. */
int64_t ad_scatter_add(int64_t x, int ndim, const int64_t *shape, const int64_t *index, int64_t block);
/* The linear recurrence along axis of b with multipliers a (same shape and dtype): forward
 * s_k = a_k s_{k-1} + b_k from s_{-1} = 0 (mode 0) or 1 (AD_SCAN_UNIT), reverse (AD_SCAN_REVERSE)
 * r_k = a_{k+1} r_{k+1} + b_k from r_len = 0; cumsum is scan(ones, x), cumprod a unit scan(x, 0).
 * Its rules never divide by a. */
enum { AD_SCAN_REVERSE = 1, AD_SCAN_UNIT = 2 };
int64_t ad_scan(int64_t a, int64_t b, int axis, int mode);
/* Linear algebra on LAPACK (kernels/lapack.c), batched over leading axes, which a and b share:
 * X = a^-1 b for a (..., n, n) and b (..., n, k) (name 1: the messages say inv, as b = I); log|det a|
 * (det 0) or det a (det 1), shaped like the batch, with the sign of det into `sign` (batch-many
 * values of a's dtype) when it is not NULL; the lower Cholesky factor of a from a's lower
 * triangle. A singular or not positive-definite matrix is AD_ERR_LINALG naming the batch element. */
int64_t ad_solve(int64_t a, int64_t b, int name);
int64_t ad_logdet(int64_t a, int det, void *sign);
int64_t ad_cholesky(int64_t a);
/* The singular value decomposition of each matrix of a (..., m, n), k = min(m, n), on gesdd as
 * numpy.linalg.svd. jobz 0: out[0] = the singular values (..., k) (jobz 'N', as svdvals), out[1] = 0.
 * jobz 1 (thin, 'S') or 2 (full, 'A'): out[1] = U (..., m, ku), S (..., k) and Vh (..., kv, n)
 * packed along one last axis of m*ku + k + kv*n (ku = kv = k thin; ku = m, kv = n full), and
 * out[0] = those singular values as their own tensor: its rules need no U and V derivative, so
 * a loss of S alone is differentiable at repeated singular values. A NaN or infinite entry, or
 * gesdd not converging, is AD_ERR_LINALG naming the batch element. */
enum { AD_SVD_VALS = 0, AD_SVD_THIN = 1, AD_SVD_FULL = 2 };
int ad_svd(int64_t a, int jobz, int64_t *out);

/* Convolution windows (kernels/conv.c), PyTorch's F.unfold / F.fold. kernel, stride, padding and
 * dilation are (rows, columns) pairs; padding is zeros. unfold: x (N, C, H, W) -> (N, C*kh*kw, L),
 * one column per window position (L = OH * OW, row-major), rows ordered (c, i, j). fold: the
 * adjoint, (N, C*kh*kw, L) -> (N, C, output_size), overlapping entries summed. */
int64_t ad_unfold(int64_t x, const int64_t *kernel, const int64_t *stride, const int64_t *padding,
                  const int64_t *dilation);
int64_t ad_fold(int64_t x, const int64_t *output_size, const int64_t *kernel, const int64_t *stride,
                const int64_t *padding, const int64_t *dilation);
/* conv2d (kernels/conv2d.c), PyTorch's F.conv2d with groups 1 and no bias: x (N, C, H, W) and w
 * (O, C, kh, kw) of one dtype -> (N, O, OH, OW), the windows as in unfold. */
int64_t ad_conv2d(int64_t x, int64_t w, const int64_t *stride, const int64_t *padding, const int64_t *dilation);

/* Reverse sweep from root. seed == 0 means ones (root must have one element). Leaves' adjoints
 * accumulate into their grad; without retain_graph the swept graph is released. All or nothing:
 * on any error (out of memory included) every grad and the graph are as they were. */
int ad_backward(int64_t root, int64_t seed, int retain_graph);
/* The grad of a leaf as a new reference (0 when it has none). */
int64_t ad_grad(int64_t h);
/* Replace the grad of a leaf (g == 0 clears it); g must match h's shape and dtype. */
int ad_set_grad(int64_t h, int64_t g);

/* Overwrite a leaf's values in place (size * itemsize bytes of its dtype) without recording
 * anything (load_state_dict). Graphs recorded earlier see the new values. */
int ad_assign(int64_t h, const void *data);

/* In-place writes. Every write to a tensor's values (these, ad_assign, ad_optim_step) bumps its
 * version; a sweep that would read a value saved at an older version fails with AD_ERR_RUNTIME
 * naming the op and both versions, before it changes anything. */
/* Overwrite dst's values with src's (same shape and dtype), recording nothing. Refused while grad
 * mode is on when dst is a leaf that requires grad, or a recorded tensor (record the update). */
int ad_write(int64_t dst, int64_t src);
/* A new leaf that shares h's values (PyTorch's .data): not recorded, writes through either are
 * seen by both and bump the version both report. */
int64_t ad_data(int64_t h);
/* The number of in-place writes to h's values so far (or a negative status). */
int64_t ad_version(int64_t h);

typedef enum { AD_OPTIM_SGD = 0, AD_OPTIM_ADAM = 1, AD_OPTIM_RMSPROP = 2, AD_OPTIM_ADAGRAD = 3 } ad_optim_kind;

typedef struct {
    int kind;                  /* ad_optim_kind */
    double lr, weight_decay;
    double momentum, dampening;
    int nesterov;              /* SGD */
    double beta1, beta2, eps;
    int decoupled;             /* Adam: 0 = L2 decay added to the gradient, 1 = AdamW */
    int amsgrad;               /* Adam: divide by the running maximum of the second moment */
    double alpha;              /* RMSprop: smoothing constant of the squared-gradient average */
    int centered;              /* RMSprop: subtract the square of the gradient average */
    double lr_decay;           /* Adagrad: lr / (1 + (t - 1) * lr_decay) */
} ad_optim_t;

/* One optimizer step on leaf p from its grad (nothing to do without one), in place, recording
 * nothing; p and its state leaves' versions are bumped. State leaves of p's shape and dtype (0:
 * none): SGD s0 = momentum buffer (needed with momentum; it starts as g at t == 1); Adam s0, s1 =
 * first and second moments, s2 = their running maximum (amsgrad); RMSprop s0 = square average,
 * s1 = momentum buffer (with momentum), s2 = gradient average (centered); Adagrad s0 = sum of
 * squares. t counts steps from 1. */
int ad_optim_step(const ad_optim_t *o, int64_t p, int64_t s0, int64_t s1, int64_t s2, int64_t t);

/* Forward mode: pushes k tangent directions from the given inputs to root in one sweep over the
 * recorded graph. tangents[i] holds input i's k directions, shape (k, *shape) or (k, size), with
 * the input's dtype; inputs must require grad (their graph was recorded) and be distinct. An
 * input may be a computed tensor: it then counts as independent (paths through it to other inputs
 * are not followed), in both sweeps. *out_tangent receives a new tensor of shape
 * (k, *root.shape) (or (k, root.size) past AD_MAXDIM dimensions), zeros where root does not depend
 * on the inputs. Neither grads nor the graph are touched. */
int ad_jvp(int64_t root, int n_leaves, const int64_t *leaves, const int64_t *tangents, int64_t k,
           int64_t *out_tangent);
/* Batched reverse mode: pulls k cotangents, stacked on the leading axis of cotangent (shape
 * (k, *root.shape) or (k, root.size), root's dtype), back to the given inputs in one sweep.
 * out_grads[i] receives a new tensor of shape (k, *input.shape) (or (k, size)) in the input's
 * dtype. Unlike ad_backward it leaves .grad alone and keeps the graph, so it can run again. */
int ad_vjp(int64_t root, int64_t cotangent, int n_leaves, const int64_t *leaves, int64_t *out_grads);
/* Reverse mode from several outputs at once (torch.autograd.grad's outputs): the sum over r of the
 * VJPs of roots[r] with cotangents[r] (each shaped like its root, in its dtype), in one sweep, so
 * the parts of one tensor (split) add into one adjoint instead of one full-size gradient each.
 * out_grads[i] receives a new tensor shaped like leaves[i]; .grad and the graph are left alone. */
int ad_vjp_many(int n_roots, const int64_t *roots, const int64_t *cotangents, int n_leaves, const int64_t *leaves,
                int64_t *out_grads);

/* Recorded reverse sweep: like ad_vjp for one cotangent shaped like root (root's dtype), but each
 * out_grads[i] (shaped like leaves[i]) is built from recorded ops, so it can be differentiated again
 * (w.r.t. the primals, and the cotangent if it requires grad). Every op needs a differentiable rule. */
int ad_vjp_graph(int64_t root, int64_t cotangent, int n_leaves, const int64_t *leaves, int64_t *out_grads);
/* Recorded forward sweep: ad_jvp for one direction (tangents shaped like the leaves), recorded. */
int ad_jvp_graph(int64_t root, int n_leaves, const int64_t *leaves, const int64_t *tangents, int64_t *out_tangent);

/* What root depends on, by one walk over its recorded ancestors that does not look through the
 * n_stop (distinct) tensors in stop (a transform's own inputs): reached[i] (reached may be NULL) is
 * set to 1 when root depends on stop[i], else 0; *outside to the number of requires-grad leaves
 * outside stop that root depends on (a closed-over parameter, say). Costs one visit per ancestor. */
int ad_depends(int64_t root, int n_stop, const int64_t *stop, int *reached, int64_t *outside);
/* backward(create_graph=True): like ad_backward (seed == 0 means ones), but the sweep is recorded
 * (as ad_vjp_graph) so every leaf's grad is itself differentiable; a leaf's grad accumulates as a
 * recorded sum with its earlier grad. The graph is kept. A grad that depends on its own leaf keeps
 * that leaf alive while the leaf has a handle; releasing the last one frees both (a node that only
 * recorded consumers reference drops its grad: nobody can read it). */
int ad_backward_graph(int64_t root, int64_t seed);

/* Grad mode of the calling thread; ad_set_grad_enabled returns the previous mode. */
int ad_grad_enabled(void);
int ad_set_grad_enabled(int enabled);

/* Anomaly mode of the calling thread, for hunting NaNs. While on, an op whose forward kernel, or
 * whose VJP (or the accumulation of its contribution), makes NaN from NaN-free values fails with
 * AD_ERR_FLOAT, and every node records the id site_fn returns (called before each op, outside
 * any lock; site_fn may be NULL) so the bindings can say where the failing op was created.
 * Returns the previous mode. Off costs one branch per op. */
typedef int64_t (*ad_site_fn)(void);
int ad_set_anomaly(int enabled, ad_site_fn site_fn);
/* Creation-site id of the op behind the calling thread's last AD_ERR_FLOAT (0: unknown). */
int64_t ad_anomaly_site(void);

/* What the op table holds for op code `op` (its name into *name): the AD_RULE_* bits of the
 * rules it has, or AD_ERR_VALUE (negative) for a code out of range. For the completeness test. */
enum { AD_RULE_VJP = 1, AD_RULE_JVP = 2, AD_RULE_SECOND_ORDER = 4, AD_RULE_VJP_RECORDED = 8,
       AD_RULE_JVP_RECORDED = 16 };
int ad_op_rules(int op, const char **name);

/* Threads that one large elementwise op splits its work over (default: the machine's cores, at
 * most 64). Results are bit-identical for any setting. */
int ad_set_num_threads(int n);
int ad_get_num_threads(void);

/* ---- custom functions, hooks and graph introspection (csrc/custom.c) ----
 *
 * A custom node's derivative rules, and a tensor's gradient hooks, live in the bindings. The core
 * calls the one callback set here, with the tape unlocked (the rule runs ops on it), on the
 * calling thread. kind says what is asked, node is the custom (or hooked) node's handle:
 *   AD_CUSTOM_VJP, AD_CUSTOM_VJP_GRAPH: args[0] = the cotangent (shaped like node); res[j] = input
 *     j's contribution, shaped like input j with its dtype, or 0 for zero. _GRAPH: recorded ops.
 *   AD_CUSTOM_JVP, AD_CUSTOM_JVP_GRAPH: args[j] = input j's tangent (0: zero); res[0] = node's.
 *   AD_CUSTOM_HOOK: args[0] = the gradient flowing into node; res[0] = a replacement or 0.
 * Every res entry is a new reference the core takes over. A nonzero return aborts the sweep with
 * AD_ERR_RUNTIME (the bindings keep their own exception); backward() then leaves every grad and
 * the graph as they were. The GRAPH kinds run with grad mode on, the others with it as it was. */
enum { AD_CUSTOM_VJP = 0, AD_CUSTOM_JVP = 1, AD_CUSTOM_VJP_GRAPH = 2, AD_CUSTOM_JVP_GRAPH = 3, AD_CUSTOM_HOOK = 4 };
typedef int (*ad_custom_fn)(int kind, int64_t node, int n_args, const int64_t *args, int n_res, int64_t *res);
void ad_set_custom_callback(ad_custom_fn fn);
/* A custom node with value a copy of `value` and inputs ins (recorded like any op: when grad mode
 * is on and an input requires grad; otherwise the result is a constant leaf). */
int64_t ad_custom(int n_in, const int64_t *ins, int64_t value);
/* Mark h (this thread's tensor, requiring grad) as having hooks: every reverse sweep through it
 * calls the callback (AD_CUSTOM_HOOK) once its gradient is complete. */
int ad_set_hook(int64_t h);
/* Handles of custom or hooked nodes freed since the last call (at most cap, into keys), so the
 * bindings can drop what they kept for them. */
int ad_custom_reap(int64_t *keys, int cap);
/* Custom and hooked nodes alive on all tapes (hessian takes its recorded path when any are). */
int64_t ad_custom_live(void);

typedef struct {
    int op;                    /* ad_op; name from ad_op_rules */
    int dtype;
    int ndim;
    int64_t shape[AD_MAXDIM];
    int64_t bytes;             /* held by the node: its record, value and saved parameters */
    int nin;                   /* recorded inputs (0 for a leaf or a released graph) */
    int requires_grad;
    int is_leaf;
    int has_grad;
    int graph_released;
    int has_hook;
} ad_node_info_t;
/* The record behind h (this thread's tensor, or a handle this function gave) and the handles of up
 * to cap of its inputs (inputs may be NULL when cap is 0). Read-only: the input handles are
 * borrowed, valid while h's graph is (a stale one is an AD_ERR_HANDLE, never a crash); they may
 * name interior nodes whose value was freed, which only this function accepts. */
int ad_node_inputs(int64_t h, ad_node_info_t *info, int cap, int64_t *inputs);

/* Counters of the calling thread's tape. */
int ad_stats(ad_stats_t *out);

/* gemm and gemv used by matmul: pointers with the Fortran BLAS signature (e.g. from
 * scipy.linalg.cython_blas), any of them NULL. Without them matmul uses a blocked C loop. */
int ad_set_blas(void *dgemm, void *sgemm, void *dgemv, void *sgemv);
/* getrf, getrs, potrf and gesdd for the linear algebra ops: Fortran LAPACK signatures without
 * hidden string lengths (scipy.linalg.cython_lapack); without them those ops are an AD_ERR_RUNTIME. */
int ad_set_lapack(void *dgetrf, void *sgetrf, void *dgetrs, void *sgetrs, void *dpotrf, void *spotrf,
                  void *dgesdd, void *sgesdd);

/* Hessian-vector products of a scalar root (forward over reverse), for k directions at once:
 * tangents[i] holds k directions for leaves[i] (shape (k, *leaf.shape)); out_hvp[i] receives a new
 * tensor of that shape whose row r is the derivative of root's gradient with respect to leaves[i]
 * along direction r, i.e. the sum over j of d2 root / d leaves[i] d leaves[j] . tangents[j][r].
 * Like ad_jvp it leaves .grad alone and keeps the graph. */
int ad_hvp(int64_t root, int n_leaves, const int64_t *leaves, const int64_t *tangents, int64_t k, int64_t *out_hvp);

/* Long work without the caller's lock. The core calls hook (on the calling thread, at most once
 * per call) before work on a tensor of at least AD_LONG_WORK elements and at the start of every
 * sweep, so that bindings which keep a global interpreter lock through short calls (a few hundred
 * nanoseconds, where releasing and retaking it would cost a fifth of the call) can release it
 * there and retake it once the call has returned. NULL (the default) turns it off. */
#define AD_LONG_WORK 16384
typedef void (*ad_gil_hook)(void);
void ad_set_gil_hook(ad_gil_hook hook);

/* ---- record once, replay in C (csrc/replay.c) ----
 *
 * A plan is the recorded graph between some inputs and a root, copied out of the tape into a flat
 * array of node records in creation order, with every buffer it needs (values, adjoints, the
 * constants it reads) assigned once, at build time, in one arena. A replay runs the forward kernels
 * and then the batched reverse sweep's VJP step (k = 1) over that array at new input values: the
 * same code as the eager ops and ad_vjp, in the same order, so the results are bit-identical.
 * Constants (tensors the graph reads that are not inputs, or were made before them) are copied into
 * the plan; their versions are checked at every replay. */
typedef struct ad_plan ad_plan;
/* Returned (positive) by ad_plan_forward / ad_plan_run when a constant was written in place since
 * the build: the plan no longer computes what the function would; record again. */
#define AD_PLAN_STALE 1
/* Elements from which a plan's elementwise chains are worth fusing (ad_plan_fuse; the bindings'
 * default): below it the chain's tensors stay in cache anyway. */
#define AD_PLAN_FUSE_MIN 16384
/* Start (on != 0) or end a recording on the calling thread's tape (the calls nest). Returns the
 * tape's count of values that have left the graph while recording: ops on requires-grad tensors
 * under no_grad, detach, .data, in-place writes (or a negative status). A recording whose count
 * moved cannot be replayed. */
int64_t ad_record_mode(int on);
/* Plan of root's recorded graph from the n_inputs distinct leaves in inputs, also computing the
 * n_watch tensors in watch (values the bindings read while recording, checked again at replay):
 * watch_index[i] receives watch i's index for ad_plan_watch, or -1 when it is a constant of the
 * plan (its value cannot change without failing the version check). Custom functions, hooks and
 * released graphs are an AD_ERR_RUNTIME. *out receives the plan (free it with ad_plan_free). */
int ad_plan_build(int64_t root, int n_inputs, const int64_t *inputs, int n_watch, const int64_t *watch,
                  int64_t *watch_index, ad_plan **out);
/* ad_plan_build where only inputs [0, n_diff) are differentiated: the others are data, read at
 * every replay and given no gradient (grads[i] for them is not read nor written). Values of fewer
 * than fuse_from elements that no reverse step reads share buffers by liveness; ad_plan_fuse leaves
 * them out of its regions, so pass the min_elements it will get (ad_plan_build: AD_PLAN_FUSE_MIN;
 * INT64_MAX when it will not be called). */
int ad_plan_build_data(int64_t root, int n_inputs, const int64_t *inputs, int n_diff, int n_watch,
                       const int64_t *watch, int64_t *watch_index, int64_t fuse_from, ad_plan **out);
/* The plan's count of inputs and of differentiated inputs (the first ones). */
int ad_plan_inputs(const ad_plan *p, int *n_inputs, int *n_diff);
/* NULL-safe; releases the plan's hold on its constants (from any thread). */
void ad_plan_free(ad_plan *p);
/* The plan's root (i = -1) or input i (0 <= i < n_inputs): shape, dtype, size; data is NULL. */
int ad_plan_info(const ad_plan *p, int i, ad_info_t *out);
/* Forward at new input values: inputs[i] holds input i's values (contiguous, its shape and dtype
 * as recorded; copied into the plan, so it may change once the call returns). The root's values go
 * to out (NULL: kept in the plan only). One replay at a time per plan: a call while another thread's replay of
 * the same plan runs is an AD_ERR_RUNTIME. */
int ad_plan_forward(ad_plan *p, const void *const *inputs, void *out);
/* Watched tensor w's values from the last forward (info->data points into the plan: valid until
 * the next replay or ad_plan_free). */
int ad_plan_watch(ad_plan *p, int w, ad_info_t *out);
/* Reverse sweep after ad_plan_forward: grads[i] (input i's size, its dtype) receives the
 * cotangent-weighted gradient of the root with respect to input i; seed holds the cotangent
 * (the root's shape and dtype), or NULL for ones when the root has one element. */
int ad_plan_backward(ad_plan *p, const void *seed, void *const *grads);
/* ad_plan_forward, then ad_plan_backward when grads is not NULL, in one call. With grads, large
 * inputs are read and large gradients written in place rather than copied (unless the caller's
 * buffers overlap), so the inputs must not change during the call, and a later ad_plan_backward
 * alone needs a forward first. */
int ad_plan_run(ad_plan *p, const void *const *inputs, void *out, const void *seed, void *const *grads);
/* A traced training step (train_step.c): a plan built by ad_plan_build_data whose n_diff
 * differentiated inputs are the parameters (params[i].param is input i) and whose other inputs are
 * the batch (data[j] is input n_diff + j, its values as recorded in shape and dtype), replayed
 * forward and backward at the parameters' current values; then each parameter the loss reaches
 * (hit) gets the gradient as its grad (as zero_grad(), backward() would give it) and is updated in
 * place by its group's optimizer settings (ad_optim_step's rules and state leaves) at step count
 * step + 1, which is stored back; a parameter not reached has its grad cleared and is not
 * updated. loss receives the root's values. One call, one tape lock; AD_PLAN_STALE as ad_plan_run. phase AD_TRAIN_FORWARD runs
 * the forward only (for the bindings' guards), AD_TRAIN_FINISH the rest after it. On an error the
 * parameters, their grads, their state and step counts are unchanged (grads are written only once
 * the replay has succeeded). */
typedef struct {
    int64_t param;             /* the parameter's leaf */
    int64_t state[3];          /* its optimizer state leaves, as ad_optim_step's s0..s2 (0: none) */
    int64_t step;              /* its step count before this step */
    int32_t group;             /* index of its settings in groups */
    int32_t hit;               /* 1: the loss depends on it */
} ad_train_param_t;
#define AD_TRAIN_STEP 0
#define AD_TRAIN_FORWARD 1
#define AD_TRAIN_FINISH 2
int ad_plan_train_step(ad_plan *p, int phase, int n_params, ad_train_param_t *params, int n_groups,
                       const ad_optim_t *groups, const void *const *data, void *loss);
/* Counters of a plan: ops (recorded nodes replayed), constants, bytes of its arena. */
int ad_plan_stats(const ad_plan *p, int64_t *ops, int64_t *constants, int64_t *bytes);
/* Steps of a plan run by its scalar program (one-element elementwise steps, csrc/scalar_replay.c):
 * forward and reverse. */
int ad_plan_scalar_ops(const ad_plan *p, int64_t *fwd, int64_t *rev);
/* Fuse the plan's chains of elementwise ops of at least min_elements elements (one shape, scalars
 * broadcast) into tiled passes, forward and reverse (csrc/fusion.c; same results, bit for bit);
 * min_elements 0 turns fusion off. Counts of the fused regions, their ops and the elements per tile
 * go to the out-parameters (each may be NULL). A backward then needs a forward first. On failure
 * the plan is unchanged. */
int ad_plan_fuse(ad_plan *p, int64_t min_elements, int64_t *regions, int64_t *ops, int64_t *tile);

#endif
