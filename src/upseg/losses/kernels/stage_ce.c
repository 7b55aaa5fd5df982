/* Cross entropy of one up-scaling stage, read from its window tensor, with the gradient of the
 * stage's 2x2 conv computed in the same pass (CPU, float32).
 *
 * Shapes (all C-contiguous):
 *   x        (B, Cin, h, w)           stage input
 *   weight   (K, Cin, 2, 2), K = 4 Nc the stage's 2x2 conv, padding 1 (upseg.models.head)
 *   windows  (B, K, h + 1, w + 1)     its output plus bias and border terms (upseg.subpixel)
 *   labels   (B, 2h, 2w) uint8        class of every output pixel, 0 .. Nc - 1
 * Output pixel (2i + a, 2j + b) has the logit of class c at windows[4c + 2a + b, i + a, j + b].
 *
 * forward: sum over the B * 2h * 2w pixels of log sum_c exp(l_c) - l_label; optionally the
 *   class sums of a soft Dice over the batch: P_c = sum of softmax_c, I_c = sum of softmax_c
 *   where the label is c.
 * backward: with d = (softmax - onehot) * scale placed at those window entries (zero elsewhere),
 *   plus, given dice_grad = (dL/dP_c, dL/dI_c), the softmax Jacobian applied to
 *   g_c = dL/dP_c + dL/dI_c [label == c]: d_c += p_c (g_c - sum_k p_k g_k):
 *   grad_x = the transposed conv of d with weight, grad_weight = the correlation of d with x,
 *   grad_bias = sum of d per channel, grad_rows / grad_cols = sums of d on the border rows
 *   (0 and h: (K, 2, w + 1)) and on columns 0 and w of the rows between ((K, 2)).
 * Both work one window row at a time, so the (B, K, h + 1, w + 1) gradient is never stored.
 * Built with OpenMP, the batch is split between `threads` threads in a fixed way; in a process
 * that has loaded PyTorch this is PyTorch's own OpenMP runtime (the same libgomp.so.1), so the
 * kernel's threads do not compete with idle PyTorch workers.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef float v8 __attribute__((vector_size(32)));

static inline v8 load8(const float *p) {
    v8 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store8(float *p, v8 v) { memcpy(p, &v, sizeof v); }

static inline v8 splat8(float f) {
    v8 v = {f, f, f, f, f, f, f, f};
    return v;
}

/* exp(x) for x <= 0 (a logit minus the pixel's largest): Cephes' expf polynomial, which
 * vectorises where the libm call does not. Relative error about 1e-7. */
static inline float exp_nonpositive(float x) {
    x = !(x >= -87.0f) ? -87.0f : x; /* NaN too: the caller counts non-finite logits */
    float n = rintf(x * 1.44269504088896341f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float power;
    memcpy(&power, &bits, sizeof power);
    return p * power;
}

/* log(v) for v in [1, Nc] (a sum of exps whose largest term is 1): Cephes' logf polynomial. */
static inline float log_sum(float v) {
    int32_t bits;
    memcpy(&bits, &v, sizeof bits);
    int32_t exponent = ((bits >> 23) & 0xff) - 126;
    int32_t mantissa_bits = (bits & 0x807fffff) | 0x3f000000; /* mantissa in [0.5, 1) */
    float mantissa;
    memcpy(&mantissa, &mantissa_bits, sizeof mantissa);
    int32_t low = mantissa < 0.707106781186547524f;
    float e = (float)(exponent - low);
    float x = low ? mantissa + mantissa - 1.0f : mantissa - 1.0f;
    float z = x * x;
    float y = 7.0376836292E-2f;
    y = y * x - 1.1514610310E-1f;
    y = y * x + 1.1676998740E-1f;
    y = y * x - 1.2420140846E-1f;
    y = y * x + 1.4249322787E-1f;
    y = y * x - 1.6668057665E-1f;
    y = y * x + 2.0000714765E-1f;
    y = y * x - 2.4999993993E-1f;
    y = y * x + 3.3333331174E-1f;
    y = y * x * z - 2.12194440e-4f * e - 0.5f * z;
    return x + y + 0.693359375f * e;
}

/* Scratch for one output row of one phase: w floats each. */
typedef struct {
    float *max, *inverse, *exps, *labels; /* exps: Nc rows of w; labels: even then odd columns */
} RowScratch;

static RowScratch row_scratch(float *memory, int64_t nc, int64_t w) {
    RowScratch s = {memory, memory + w, memory + 2 * w, memory + (2 + nc) * w};
    return s;
}

static int64_t row_scratch_floats(int64_t nc, int64_t w) { return (4 + nc) * w; }

/* Labels of one output row as floats, split into even and odd columns (phases b = 0, 1). */
static void split_labels(const uint8_t *row, int64_t w, float *even, float *odd) {
    for (int64_t j = 0; j < w; j++) {
        even[j] = (float)row[2 * j];
        odd[j] = (float)row[2 * j + 1];
    }
}

/* One phase (a, b) of one window row: `logits` points at class 0's entry for column j = 0
 * (window column b); class c is 4c planes further. Leaves exp(l_c - max) in s.exps, 1 / sum
 * in s.inverse, and returns the row's sum of cross entropies. Counts non-finite logits. */
static float phase_row(const float *logits, int64_t plane, const float *labels, int64_t nc,
                       int64_t w, RowScratch s, int32_t *nonfinite) {
    for (int64_t j = 0; j < w; j++) {
        s.max[j] = -FLT_MAX;
        s.inverse[j] = 0.0f;
    }
    int32_t bad = 0;
    for (int64_t c = 0; c < nc; c++) {
        const float *l = logits + 4 * c * plane;
#pragma omp simd reduction(+ : bad)
        for (int64_t j = 0; j < w; j++) {
            float v = l[j];
            bad += !(fabsf(v) <= FLT_MAX);
            s.max[j] = v > s.max[j] ? v : s.max[j];
        }
    }
    *nonfinite += bad;
    float picked = 0.0f;
    for (int64_t c = 0; c < nc; c++) {
        const float *l = logits + 4 * c * plane;
        float *e = s.exps + c * w;
        float class_value = (float)c;
#pragma omp simd reduction(+ : picked)
        for (int64_t j = 0; j < w; j++) {
            float shifted = l[j] - s.max[j];
            e[j] = exp_nonpositive(shifted);
            s.inverse[j] += e[j];
            picked += labels[j] == class_value ? shifted : 0.0f;
        }
    }
    float logs = 0.0f;
#pragma omp simd reduction(+ : logs)
    for (int64_t j = 0; j < w; j++) {
        logs += log_sum(s.inverse[j]);
        s.inverse[j] = 1.0f / s.inverse[j];
    }
    return logs - picked;
}

/* After phase_row: adds the row's softmax sums per class to sums[c] and, where the label is
 * c, to sums[nc + c]. */
static void add_class_sums(RowScratch s, const float *labels, int64_t nc, int64_t w,
                           double *sums) {
    for (int64_t c = 0; c < nc; c++) {
        const float *e = s.exps + c * w;
        float class_value = (float)c, all = 0.0f, hit = 0.0f;
#pragma omp simd reduction(+ : all, hit)
        for (int64_t j = 0; j < w; j++) {
            float p = e[j] * s.inverse[j];
            all += p;
            hit += labels[j] == class_value ? p : 0.0f;
        }
        sums[c] += all;
        sums[nc + c] += hit;
    }
}

/* Images start .. stop - 1: result[0] += summed cross entropy, result[1] += non-finite logits,
 * result[2 ..] += the class sums (add_class_sums) when `with_sums`; result[1] = -1 when out
 * of memory. */
static void forward_images(const float *windows, const uint8_t *labels, int64_t start,
                           int64_t stop, int64_t nc, int64_t h, int64_t w, int with_sums,
                           double *result) {
    int64_t rows = h + 1, cols = w + 1, plane = rows * cols;
    float *memory = malloc(sizeof(float) * row_scratch_floats(nc, w));
    if (!memory) {
        result[1] = -1.0;
        return;
    }
    RowScratch s = row_scratch(memory, nc, w);
    double total = 0.0;
    int32_t nonfinite = 0;
    for (int64_t n = start; n < stop; n++) {
        for (int64_t i = 0; i < h; i++) {
            for (int64_t a = 0; a < 2; a++) {
                split_labels(labels + (n * 2 * h + 2 * i + a) * 2 * w, w, s.labels,
                             s.labels + w);
                for (int64_t b = 0; b < 2; b++) {
                    const float *logits =
                        windows + ((n * 4 * nc + 2 * a + b) * rows + i + a) * cols + b;
                    total += phase_row(logits, plane, s.labels + b * w, nc, w, s, &nonfinite);
                    if (with_sums) add_class_sums(s, s.labels + b * w, nc, w, result + 2);
                }
            }
        }
    }
    free(memory);
    result[0] += total;
    result[1] += nonfinite;
}

/* The batch split into `threads` parts in a fixed way, so sums do not depend on timing. */
static int64_t part_start(int64_t batch, int64_t part, int64_t threads) {
    return batch * part / threads;
}

/* result[0] = summed cross entropy of the batch, result[1] = non-finite logits (-1: no memory);
 * with `with_sums`, result[2 .. 2 + nc) = P_c and result[2 + nc .. 2 + 2 nc) = I_c. */
void stage_ce_forward(const float *windows, const uint8_t *labels, int64_t batch, int64_t nc,
                      int64_t h, int64_t w, int64_t with_sums, int64_t threads, double *result) {
    int64_t size = 2 + 2 * nc;
    double *parts = calloc(size * threads, sizeof(double));
    if (!parts) {
        result[1] = -1.0;
        return;
    }
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int64_t t = 0; t < threads; t++)
        forward_images(windows, labels, part_start(batch, t, threads),
                       part_start(batch, t + 1, threads), nc, h, w, (int)with_sums,
                       parts + size * t);
    for (int64_t e = 0; e < size; e++) result[e] = 0.0;
    for (int64_t t = 0; t < threads; t++) {
        const double *mine = parts + size * t;
        result[0] += mine[0];
        result[1] = mine[1] < 0 || result[1] < 0 ? -1.0 : result[1] + mine[1];
        for (int64_t e = 2; e < size; e++) result[e] += mine[e];
    }
    free(parts);
}

/* The cross entropy's gradient at window row p of image n, times scale, plus the class sums'
 * part when dice_grad (2 nc floats: dL/dP_c, then dL/dI_c) is not NULL: row k of d (k-th row
 * `d_stride` floats after the previous) gets channel k's entries for columns 0 .. w, zero
 * where the channel's phase does not reach. */
static void window_grad_row(const float *windows, const uint8_t *labels, int64_t n, int64_t p,
                            int64_t nc, int64_t h, int64_t w, float scale, const float *dice_grad,
                            RowScratch s, float *d, int64_t d_stride) {
    int64_t K = 4 * nc, rows = h + 1, cols = w + 1, plane = rows * cols;
    int32_t nonfinite = 0; /* counted by the forward pass */
    for (int64_t a = 0; a < 2; a++) {
        int64_t i = p - a;
        if (i < 0 || i >= h) { /* phase row a does not reach window row p */
            for (int64_t c = 0; c < nc; c++)
                for (int64_t b = 0; b < 2; b++)
                    memset(d + (4 * c + 2 * a + b) * d_stride, 0, sizeof(float) * cols);
            continue;
        }
        split_labels(labels + (n * 2 * h + 2 * i + a) * 2 * w, w, s.labels, s.labels + w);
        for (int64_t b = 0; b < 2; b++) {
            const float *logits = windows + ((n * K + 2 * a + b) * rows + p) * cols + b;
            const float *lab = s.labels + b * w;
            phase_row(logits, plane, lab, nc, w, s, &nonfinite);
            float *mean_g = s.max; /* free after phase_row: sum_k p_k g_k per column */
            if (dice_grad) {
                for (int64_t j = 0; j < w; j++) mean_g[j] = 0.0f;
                for (int64_t c = 0; c < nc; c++) {
                    const float *e = s.exps + c * w;
                    float class_value = (float)c, gp = dice_grad[c], gi = dice_grad[nc + c];
#pragma omp simd
                    for (int64_t j = 0; j < w; j++)
                        mean_g[j] += e[j] * s.inverse[j] * (gp + (lab[j] == class_value ? gi : 0.0f));
                }
            }
            for (int64_t c = 0; c < nc; c++) {
                float *dc = d + (4 * c + 2 * a + b) * d_stride;
                const float *e = s.exps + c * w;
                float class_value = (float)c;
                dc[b ? 0 : w] = 0.0f; /* the window column this phase does not reach */
                dc += b;
                if (dice_grad) {
                    float gp = dice_grad[c], gi = dice_grad[nc + c];
#pragma omp simd
                    for (int64_t j = 0; j < w; j++) {
                        float prob = e[j] * s.inverse[j], hit = lab[j] == class_value;
                        dc[j] = (prob - hit) * scale + prob * (gp + hit * gi - mean_g[j]);
                    }
                } else {
#pragma omp simd
                    for (int64_t j = 0; j < w; j++)
                        dc[j] = (e[j] * s.inverse[j] - (lab[j] == class_value)) * scale;
                }
            }
        }
    }
}

/* Window row p: d (K rows of `stride` floats, zero past column w) -> grad_weight accumulators
 * (one vector of 8 partial sums per weight) and the padded input gradient rows p, p + 1. */
static void conv_grads_row(const float *d, int64_t stride, int64_t k_count, int64_t cin,
                           const float *xpad, float *gxpad, int64_t pplane, int64_t pw, int64_t p,
                           const float *weight_by_tap, v8 *gw) {
    int64_t taps = cin * 4;
    for (int64_t ci = 0; ci < cin; ci++) {
        for (int64_t ty = 0; ty < 2; ty++) {
            const float *xr = xpad + ci * pplane + (p + ty) * pw;
            for (int64_t k = 0; k < k_count; k += 4) {
                v8 *acc = gw + k * taps + (ci * 2 + ty) * 2;
                v8 a00 = acc[0], a01 = acc[1], a10 = acc[taps], a11 = acc[taps + 1];
                v8 a20 = acc[2 * taps], a21 = acc[2 * taps + 1];
                v8 a30 = acc[3 * taps], a31 = acc[3 * taps + 1];
                const float *d0 = d + k * stride;
                for (int64_t q = 0; q < stride; q += 8) {
                    v8 x0 = load8(xr + q), x1 = load8(xr + q + 1);
                    v8 e0 = load8(d0 + q), e1 = load8(d0 + stride + q);
                    v8 e2 = load8(d0 + 2 * stride + q), e3 = load8(d0 + 3 * stride + q);
                    a00 += e0 * x0;
                    a01 += e0 * x1;
                    a10 += e1 * x0;
                    a11 += e1 * x1;
                    a20 += e2 * x0;
                    a21 += e2 * x1;
                    a30 += e3 * x0;
                    a31 += e3 * x1;
                }
                acc[0] = a00;
                acc[1] = a01;
                acc[taps] = a10;
                acc[taps + 1] = a11;
                acc[2 * taps] = a20;
                acc[2 * taps + 1] = a21;
                acc[3 * taps] = a30;
                acc[3 * taps + 1] = a31;
            }
            float *gr = gxpad + ci * pplane + (p + ty) * pw;
            const float *w0 = weight_by_tap + (ci * 2 + ty) * 2 * k_count, *w1 = w0 + k_count;
            for (int64_t q = 0; q < stride; q += 16) {
                /* eight independent sums (two column vectors, two taps, even and odd k), so
                 * the multiply-adds do not wait on each other */
                v8 g[2][2][2] = {{{0}}};
                for (int64_t k = 0; k < k_count; k += 2) {
                    for (int odd = 0; odd < 2; odd++) {
                        const float *dk = d + (k + odd) * stride + q;
                        v8 d0 = load8(dk), d1 = load8(dk + 8);
                        v8 s0 = splat8(w0[k + odd]), s1 = splat8(w1[k + odd]);
                        g[odd][0][0] += s0 * d0;
                        g[odd][0][1] += s0 * d1;
                        g[odd][1][0] += s1 * d0;
                        g[odd][1][1] += s1 * d1;
                    }
                }
                store8(gr + q, load8(gr + q) + g[0][0][0] + g[1][0][0]);
                store8(gr + q + 8, load8(gr + q + 8) + g[0][0][1] + g[1][0][1]);
                store8(gr + q + 1, load8(gr + q + 1) + g[0][1][0] + g[1][1][0]);
                store8(gr + q + 9, load8(gr + q + 9) + g[0][1][1] + g[1][1][1]);
            }
        }
    }
}

/* Images start .. stop - 1: writes their grad_x and adds their gradients into grad_weight,
 * grad_bias, grad_rows and grad_cols. Returns 0, or -1 when out of memory. */
static int backward_images(const float *x, const float *weight, const float *windows,
                           const uint8_t *labels, int64_t start, int64_t stop, int64_t cin,
                           int64_t nc, int64_t h, int64_t w, float scale,
                           const float *dice_grad, float *grad_x,
                           float *grad_weight, float *grad_bias, float *grad_rows,
                           float *grad_cols) {
    int64_t K = 4 * nc, cols = w + 1, taps = cin * 4;
    int64_t stride = (cols + 15) & ~(int64_t)15;    /* a window row, in whole vector pairs */
    int64_t pw = stride + 8, pplane = (h + 2) * pw; /* input rows with zero padding */
    float *xpad = calloc(cin * pplane, sizeof(float));
    float *gxpad = malloc(sizeof(float) * cin * pplane);
    float *d = calloc(K * stride, sizeof(float));
    v8 *gw = aligned_alloc(32, sizeof(v8) * K * taps);
    float *weight_by_tap = malloc(sizeof(float) * K * taps);
    float *memory = malloc(sizeof(float) * row_scratch_floats(nc, w));
    int status = 0;
    if (!xpad || !gxpad || !d || !gw || !weight_by_tap || !memory) {
        status = -1;
        goto done;
    }
    RowScratch s = row_scratch(memory, nc, w);
    memset(gw, 0, sizeof(v8) * K * taps);
    for (int64_t k = 0; k < K; k++)
        for (int64_t t = 0; t < taps; t++) weight_by_tap[t * K + k] = weight[k * taps + t];
    for (int64_t n = start; n < stop; n++) {
        for (int64_t ci = 0; ci < cin; ci++)
            for (int64_t i = 0; i < h; i++)
                memcpy(xpad + ci * pplane + (i + 1) * pw + 1, x + ((n * cin + ci) * h + i) * w,
                       sizeof(float) * w);
        memset(gxpad, 0, sizeof(float) * cin * pplane);
        for (int64_t p = 0; p <= h; p++) {
            window_grad_row(windows, labels, n, p, nc, h, w, scale, dice_grad, s, d, stride);
            for (int64_t k = 0; k < K; k++) {
                const float *dk = d + k * stride;
                float total = 0.0f;
#pragma omp simd reduction(+ : total)
                for (int64_t q = 0; q < cols; q++) total += dk[q];
                grad_bias[k] += total;
                if (p == 0 || p == h) {
                    float *gr = grad_rows + (k * 2 + (p == h)) * cols;
                    for (int64_t q = 0; q < cols; q++) gr[q] += dk[q];
                } else {
                    grad_cols[k * 2] += dk[0];
                    grad_cols[k * 2 + 1] += dk[w];
                }
            }
            conv_grads_row(d, stride, K, cin, xpad, gxpad, pplane, pw, p, weight_by_tap, gw);
        }
        for (int64_t ci = 0; ci < cin; ci++)
            for (int64_t i = 0; i < h; i++)
                memcpy(grad_x + ((n * cin + ci) * h + i) * w,
                       gxpad + ci * pplane + (i + 1) * pw + 1, sizeof(float) * w);
    }
    for (int64_t t = 0; t < K * taps; t++) {
        float total = 0.0f;
        for (int l = 0; l < 8; l++) total += gw[t][l];
        grad_weight[t] += total;
    }
done:
    free(xpad);
    free(gxpad);
    free(d);
    free(gw);
    free(weight_by_tap);
    free(memory);
    return status;
}

/* The batch's grad_x, grad_weight, grad_bias, grad_rows and grad_cols (all overwritten).
 * Returns 0, or -1 when out of memory. */
int stage_ce_backward(const float *x, const float *weight, const float *windows,
                      const uint8_t *labels, int64_t batch, int64_t cin, int64_t nc, int64_t h,
                      int64_t w, float scale, const float *dice_grad, int64_t threads,
                      float *grad_x, float *grad_weight, float *grad_bias, float *grad_rows,
                      float *grad_cols) {
    int64_t K = 4 * nc, cols = w + 1;
    int64_t sizes[4] = {K * cin * 4, K, K * 2 * cols, K * 2};
    int64_t part = sizes[0] + sizes[1] + sizes[2] + sizes[3];
    float *parts = calloc(threads * part, sizeof(float));
    if (!parts) return -1;
    int failed = 0;
#pragma omp parallel for num_threads(threads) schedule(static, 1) reduction(| : failed)
    for (int64_t t = 0; t < threads; t++) {
        float *mine = parts + t * part;
        failed |= backward_images(x, weight, windows, labels, part_start(batch, t, threads),
                                  part_start(batch, t + 1, threads), cin, nc, h, w, scale,
                                  dice_grad, grad_x, mine, mine + sizes[0], mine + sizes[0] + sizes[1],
                                  mine + sizes[0] + sizes[1] + sizes[2]);
    }
    float *outputs[4] = {grad_weight, grad_bias, grad_rows, grad_cols};
    int64_t offset = 0;
    for (int o = 0; o < 4; o++) {
        for (int64_t e = 0; e < sizes[o]; e++) {
            float total = 0.0f;
            for (int64_t t = 0; t < threads; t++) total += parts[t * part + offset + e];
            outputs[o][e] = total;
        }
        offset += sizes[o];
    }
    free(parts);
    return failed ? -1 : 0;
}

/* The gradient with respect to the windows (window_grad_row) into grad_windows
 * (B, K, h + 1, w + 1), every entry written. Returns 0, or -1 when out of memory. */
int stage_ce_window_grad(const float *windows, const uint8_t *labels, int64_t batch, int64_t nc,
                         int64_t h, int64_t w, float scale, const float *dice_grad,
                         int64_t threads, float *grad_windows) {
    int64_t K = 4 * nc, rows = h + 1, cols = w + 1, plane = rows * cols;
    int failed = 0;
#pragma omp parallel for num_threads(threads) schedule(static, 1) reduction(| : failed)
    for (int64_t t = 0; t < threads; t++) {
        float *memory = malloc(sizeof(float) * row_scratch_floats(nc, w));
        if (!memory) {
            failed = 1;
            continue;
        }
        RowScratch s = row_scratch(memory, nc, w);
        for (int64_t n = part_start(batch, t, threads); n < part_start(batch, t + 1, threads);
             n++)
            for (int64_t p = 0; p <= h; p++)
                window_grad_row(windows, labels, n, p, nc, h, w, scale, dice_grad, s,
                                grad_windows + n * K * plane + p * cols, plane);
        free(memory);
    }
    return failed ? -1 : 0;
}
