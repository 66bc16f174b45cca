/* The matcher's inner loop: one observed series against every signature of a
 * state (cronos/analysis/match.py documents the model and calls it; the matcher's tests
 * in tests/test_match.py and tests/test_model_match.py exercise it).
 *
 * For each signature row and each anchor (the first packet seen is the first
 * one sent, k0 = 0, or the second, k0 = 1), the observed packets are aligned to
 * expected ones in time order (each to the expected packet just before or just
 * after it, or to none: "unexplained"), by dynamic programming on a robust
 * cost; the alignment then gets its exact cost: loss, unexplained packets,
 * RST, the common offset of the packets after the first, the first SYN-ACK's
 * RTT, and the log-likelihood of the arrival times for every queueing scale
 * of the grid. The anchor with the lower cost (this observation alone) wins.
 *
 * No numpy C API: arrays arrive as buffers (Py_buffer), float64 / int64.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum {
    P_XR, P_HORIZON, P_A0, P_LOST, P_KEEP, P_RST_LOST, P_RST_KEEP, P_RST_GEN,
    P_RTT_MU, P_RTT_SIGMA, P_GATE, P_UNEXPL, P_SPREAD_Z, P_LAM_REF, P_CHOICE, P_NPARAMS
};
enum { I_K0, I_LOST, I_UNEXPL, I_RST, I_SHIFT, I_ALONE, I_NIN, I_S, I_SBAR, I_TAIL, I_TAILC,
       I_NFIELDS };
#define BIG 1e300
enum { OFF_SD, OFF_SLIP_SD, OFF_CORE_COST, OFF_SLIP_COST, OFF_N };

typedef struct {
    Py_ssize_t *cand, *lastj;
    double *dp, *rr, *ss;
    int *from, *beyond;
} Scratch;

typedef struct {
    const double *t, *s;
    const int64_t *start;
    const double *rst_t, *rst_s, *time_us, *off, *scale, *optional, *limit;
    const double *x, *gen;
    const double *p;
    Py_ssize_t n;  /* observed packets after the first */
    double rtt0;  /* the first packet's RTT cost when it is the first one sent (anchor 0) */
    const double *log_n;  /* log(k) for k = 0 .. n + 2 */
    double loss;  /* exp(-p[P_LOST]) */
    double due;  /* -log1p(-(1 - loss)): an expected packet certainly due, missing */
} Ctx;

typedef struct {
    double base, alone, shift, big_s, s_bar, n_in, tail_cost;
    int k0, lost, unexpl, rst, tail;
} Res;

static double rtt_cost(double rtt, double mu, double sigma) {
    if (rtt < 1.0) rtt = 1.0;
    double z = (log(rtt) - mu) / sigma;
    return 0.5 * z * z + log(rtt * sigma * 2.5066282746310002);
}

/* first index in [lo, hi] whose time is > y (hi + 1 if none) */
static Py_ssize_t upper(const double *t, double sc, Py_ssize_t lo, Py_ssize_t hi, double y) {
    while (lo <= hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (t[mid] * sc <= y) lo = mid + 1;
        else hi = mid - 1;
    }
    return lo;
}

/* One row, one anchor; the common offset's prior spread `sd` (the row's own,
   or its slips'), at a prior cost `extra`. pos/off (n each) receive the alignment. */
static void one(const Ctx *c, const Scratch *w, Py_ssize_t r, int k0, double sd, double extra,
                Res *out, int32_t *pos, double *off) {
    const double *p = c->p;
    const double sc = c->scale[r];
    const Py_ssize_t b = c->start[r], e = c->start[r + 1];  /* row's flat range */
    const Py_ssize_t m = e - b;
    const Py_ssize_t n = c->n;
    memset(out, 0, sizeof(*out));
    out->k0 = k0;
    if (m <= k0) { out->alone = out->base = INFINITY; return; }
    const double *t = c->t + b, *s = c->s + b;
    const double anchor = t[k0] * sc;
    /* the first packet seen cannot be the second one sent (it came before
       our SYN could have been answered so late): the cost below would be
       infinite, and the first anchor's (always computed) is chosen */
    if (k0 > 0 && !isnan(p[P_A0]) && p[P_A0] - anchor < -p[P_GATE]) {
        out->alone = out->base = INFINITY;
        return;
    }
    const double s_anchor = s[k0];
    const double tmax = c->time_us[r] + p[P_GATE];
    const double lam_ref = p[P_LAM_REF];
    const double off_tol = (k0 == 0) ? sd : 0.0;
    /* --- DP alignment: state = chosen expected index per packet (2 candidates) or none */
    Py_ssize_t *cand = w->cand, *lastj = w->lastj;
    double *dp = w->dp;
    int *from = w->from, *beyond = w->beyond;
    for (Py_ssize_t i = 0; i < n; i++) {
        double y = c->x[i + 1] + anchor;
        Py_ssize_t u = upper(t, sc, k0 + 1, m - 1, y);
        cand[2 * i] = (u - 1 >= k0 + 1) ? u - 1 : -1;
        cand[2 * i + 1] = (u <= m - 1) ? u : -1;
        beyond[i] = y > tmax;
        for (int k = 0; k < 2; k++) {
            Py_ssize_t j = cand[2 * i + k];
            if (j >= 0 && fabs(y - t[j] * sc) > p[P_GATE] + 5 * s[j]) cand[2 * i + k] = -1;
        }
    }
    /* dp[i][k]: best robust cost of packets 0..i with packet i in state k
       (0, 1: candidate; 2: unexplained); lastj: the last expected index used */
    for (Py_ssize_t i = 0; i < n; i++) {
        double y = c->x[i + 1] + anchor;
        for (int k = 0; k < 3; k++) {
            Py_ssize_t j = (k < 2) ? cand[2 * i + k] : -1;
            double own;
            dp[3 * i + k] = BIG;
            from[3 * i + k] = -1;
            lastj[3 * i + k] = k0;
            if (k < 2) {
                /* after the row's limit (Linux's orphan budget) the stack sends nothing */
                if (j < 0 || beyond[i] || y > c->limit[r]) continue;
                /* tolerance: queueing, the stack's spread, its common offset */
                own = fabs(y - t[j] * sc) / (1.0 / lam_ref + s[j] + off_tol);
            } else {
                own = c->gen[i] + (beyond[i] ? 0.0 : p[P_UNEXPL]);
            }
            double best = BIG;
            int arg = -1;
            Py_ssize_t bl = k0;
            int nq = (i == 0) ? 1 : 3;
            for (int q = 0; q < nq; q++) {
                double v = (i == 0) ? 0.0 : dp[3 * (i - 1) + q];
                Py_ssize_t prev = (i == 0) ? k0 : lastj[3 * (i - 1) + q];
                if (v >= BIG) continue;
                double step = 0.0;
                if (k < 2) {
                    if (j <= prev) continue;
                    step = (double)(j - prev - 1) * p[P_LOST];
                }
                if (v + step < best) {
                    best = v + step;
                    arg = q;
                    bl = (k < 2) ? j : prev;
                }
            }
            if (best >= BIG) continue;
            dp[3 * i + k] = best + own;
            from[3 * i + k] = arg;
            lastj[3 * i + k] = bl;
        }
    }
    /* back-track (state 2 is always reachable: a packet may be unexplained) */
    if (n > 0) {
        int k = 2;
        double bestv = dp[3 * (n - 1) + 2];
        for (int q = 0; q < 2; q++)
            if (dp[3 * (n - 1) + q] < bestv) { bestv = dp[3 * (n - 1) + q]; k = q; }
        for (Py_ssize_t i = n - 1; i >= 0; i--) {
            pos[i] = (k < 2) ? (int32_t)cand[2 * i + k] : -1;
            k = from[3 * i + k];
        }
    }
    /* --- exact cost of the alignment */
    Py_ssize_t n_ok = 0, unexpl = 0, last_j = k0, i_last = -1;
    double pen = 0.0, u_min = INFINITY, s2 = 0.0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (pos[i] >= 0) {
            double r_i = c->x[i + 1] + anchor - t[pos[i]] * sc;
            off[i] = r_i;
            if (r_i < u_min) u_min = r_i;
            s2 += s[pos[i]] * s[pos[i]];
            n_ok++;
            if (pos[i] > last_j) { last_j = pos[i]; i_last = i; }
        } else {
            off[i] = 0.0;
            pen += c->gen[i];
            if (!beyond[i]) { pen += p[P_UNEXPL]; unexpl++; }
        }
    }
    /* the common offset of everything after the first packet (anchor 0 only) */
    double delta = 0.0;
    if (k0 == 0 && n_ok > 0) {
        double var = sd * sd;
        double lr = 1.0 / (1.0 / lam_ref + sqrt(s2 / (double)n_ok));
        double lo = -lr * var, hi = (double)n_ok * lr * var;
        delta = u_min < lo ? lo : (u_min > hi ? hi : u_min);
        double lim = p[P_SPREAD_Z] * sd;
        if (delta < -lim) delta = -lim;
        if (delta > lim) delta = lim;
    }
    double rmin = 0.0, sum_r = 0.0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (pos[i] >= 0) {
            off[i] -= delta;
            if (off[i] < rmin) rmin = off[i];
            sum_r += off[i];
        }
    /* the final RST */
    double rst_cost = 0.0, r_rst = 0.0;
    int rst_in = 0, code = 0;
    double sig_rst = c->rst_t[r] * sc;
    int has_rst = !isnan(c->rst_t[r]);
    double xr = p[P_XR];
    if (!isnan(xr)) {
        double yr = xr + anchor;
        if (has_rst && fabs(yr - sig_rst - delta) <= p[P_GATE] + 5 * c->rst_s[r]) {
            rst_in = 1;
            r_rst = yr - sig_rst - delta;
            if (r_rst < rmin) rmin = r_rst;
            s2 += c->rst_s[r] * c->rst_s[r];
            rst_cost = p[P_RST_KEEP];
            code = 1;
        } else {
            code = has_rst ? 2 : 3;
            rst_cost = (yr > tmax) ? p[P_RST_GEN] : p[P_RST_GEN] + p[P_UNEXPL];
        }
    } else if (has_rst && sig_rst - anchor <= p[P_HORIZON]) {
        code = 4;
        rst_cost = p[P_RST_LOST];
    }
    double n_in = (double)n_ok + 1.0 + rst_in;
    double s_bar = sqrt((s2 + s_anchor * s_anchor) / n_in);
    /* the series' own delay (the shift u): at most the least residual when
       every arrival is the schedule plus a queueing delay; above it when one
       arrival is early within the stack's own spread (a timer that fired at
       the low end of its rounding, a signature learned at the high end). Each
       arrival below u costs (u - r)^2 / 2 s^2, each above it lam (r - u):
       convex in u, minimised over the sorted residuals. */
    double early = 0.0, u = rmin;
    {
        Py_ssize_t k = 0;
        double *rr = w->rr, *ss = w->ss;
        rr[k] = 0.0; ss[k] = s_anchor; k++;
        for (Py_ssize_t i = 0; i < n; i++)
            if (pos[i] >= 0) { rr[k] = off[i]; ss[k] = s[pos[i]]; k++; }
        if (rst_in) { rr[k] = r_rst; ss[k] = c->rst_s[r]; k++; }
        /* insertion sort by residual (k is small) */
        for (Py_ssize_t a = 1; a < k; a++) {
            double vr = rr[a], vs = ss[a];
            Py_ssize_t z = a - 1;
            while (z >= 0 && rr[z] > vr) { rr[z + 1] = rr[z]; ss[z + 1] = ss[z]; z--; }
            rr[z + 1] = vr; ss[z + 1] = vs;
        }
        double lam_c = 1.0 / (p[P_CHOICE] + s_bar);
        double sw = 0.0, swr = 0.0;
        u = rr[0];
        for (Py_ssize_t a = 0; a < k; a++) {
            if (ss[a] <= 0.0) { u = rr[a]; break; }  /* exact: never early */
            sw += 1.0 / (ss[a] * ss[a]);
            swr += rr[a] / (ss[a] * ss[a]);
            double cand = (lam_c * (double)(k - a - 1) + swr) / sw;
            double next = (a + 1 < k) ? rr[a + 1] : INFINITY;
            if (cand < rr[a]) cand = rr[a];
            if (cand <= next) { u = cand; break; }
            u = next;
        }
        double big = 0.0;
        for (Py_ssize_t a = 0; a < k; a++) {
            if (rr[a] < u) early += 0.5 * (u - rr[a]) * (u - rr[a]) / (ss[a] * ss[a]);
            else big += rr[a] - u;
        }
        rmin = u;
        out->big_s = big;
    }
    double big_s = out->big_s;
    /* lost: expected within what we listened to, not matched. Before the
       last packet seen, every expected packet is due; after it, a packet
       is due with the probability q that it would have come before the end
       of listening: its time is the last seen one's (less that one's own
       queueing) plus the schedule's gap, within the schedule's spread; not
       seeing it costs -log(1 - q + q loss), not -log(loss). A series cut
       short by the listening window (the next retransmission due just
       after it) then says nothing about the stacks that would send it.
       Packets after the row's `optional` time (Linux's orphan budget) are
       not lost. */
    double opt = c->optional[r];
    Py_ssize_t matched = n_ok + 1;
    Py_ssize_t inner = last_j + 1 - matched;  /* expected before the last seen, missed */
    if (inner < 0) inner = 0;
    double y_last = anchor, s_last = s[last_j];
    if (i_last >= 0) {
        double qd = off[i_last] - u;  /* the last seen packet's own queueing */
        y_last = c->x[i_last + 1] + anchor - (qd > 0.0 ? qd : 0.0);
    }
    double hz = anchor + p[P_HORIZON];
    double loss = c->loss;
    double tail_cost = 0.0;
    Py_ssize_t tail = 0;
    for (Py_ssize_t j = last_j + 1; j < m; j++) {
        double tj = t[j] * sc;
        if (tj > opt) break;
        double gap = (t[j] - t[last_j]) * sc;
        double v = s[j] * s[j] - s_last * s_last;
        double sdj = (v > 0.0 ? sqrt(v) : 0.0) * sc + 0.02 * gap + 1000.0;
        double z = (hz - (y_last + gap)) / sdj;
        if (z < -8.0) break;
        if (z > 9.0) {  /* q is 1.0 to the last bit: no erfc, the same cost */
            tail_cost += c->due;
            tail++;
            continue;
        }
        double q = 0.5 * erfc(-z / 1.4142135623730951);
        tail_cost += -log1p(-q * (1.0 - loss));
        if (q >= 0.5) tail++;
    }
    Py_ssize_t lost = inner + tail;
    double base = (double)inner * p[P_LOST] + tail_cost + (double)matched * p[P_KEEP] + pen
                  + rst_cost + early;
    if (sd > 0) base += 0.5 * (delta / sd) * (delta / sd);
    base += extra;
    if (!isnan(p[P_A0])) {
        double rtt = p[P_A0] - anchor;
        base += (rtt < -p[P_GATE]) ? INFINITY
                : (anchor == 0.0 ? c->rtt0 : rtt_cost(rtt, p[P_RTT_MU], p[P_RTT_SIGMA]));
    }
    /* the anchor is chosen at one queueing scale; match.py integrates over all */
    double lam = 1.0 / (p[P_CHOICE] + s_bar);
    out->base = base;
    out->alone = base - (n_in - 1.0) * log(lam) + lam * big_s + c->log_n[(Py_ssize_t)n_in];
    out->shift = rmin + delta;
    out->big_s = big_s;
    out->s_bar = s_bar;
    out->n_in = n_in;
    out->lost = (int)lost;
    out->tail = (int)tail;
    out->tail_cost = tail_cost;
    out->unexpl = (int)unexpl;
    out->rst = code;
    for (Py_ssize_t i = 0; i < n; i++)
        if (pos[i] >= 0) off[i] -= rmin; /* offsets after the shift */
}

static int get(PyObject *o, Py_buffer *v, int writable, Py_ssize_t itemsize, const char *what) {
    if (PyObject_GetBuffer(o, v, (writable ? PyBUF_WRITABLE : 0) | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (v->itemsize != itemsize) {
        PyErr_Format(PyExc_TypeError, "%s: wrong item size", what);
        PyBuffer_Release(v);
        return -1;
    }
    return 0;
}

#define NARGS 17

static PyObject *timing(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o[NARGS];
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOOOOOO", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5],
                          &o[6], &o[7], &o[8], &o[9], &o[10], &o[11], &o[12], &o[13], &o[14],
                          &o[15], &o[16]))
        return NULL;
    /* in: t s start rst_t rst_s time_us off scale optional limit x gen params;
       out: base info pos off. off: per row (OFF_N values) the offset's spread,
       its slips' spread (0: none), the prior cost of no slip and of a slip */
    static const int sizes[NARGS] = {8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 4, 8};
    Py_buffer v[NARGS];
    int got = 0;
    for (; got < NARGS; got++)
        if (get(o[got], &v[got], got >= 13, sizes[got], "array") < 0) break;
    if (got < NARGS) {
        for (int i = 0; i < got; i++) PyBuffer_Release(&v[i]);
        return NULL;
    }
    Ctx c;
    c.t = v[0].buf; c.s = v[1].buf; c.start = v[2].buf; c.rst_t = v[3].buf; c.rst_s = v[4].buf;
    c.time_us = v[5].buf; c.off = v[6].buf; c.scale = v[7].buf; c.optional = v[8].buf;
    c.limit = v[9].buf; c.x = v[10].buf; c.gen = v[11].buf; c.p = v[12].buf;
    Py_ssize_t rows = v[3].len / 8;
    c.n = v[10].len / 8 - 1;
    double *obase = v[13].buf, *oinfo = v[14].buf, *ooff = v[16].buf;
    int32_t *opos = v[15].buf;
    PyObject *ret = NULL;
    Py_ssize_t n = c.n;
    if (n < 0 || v[12].len / 8 < P_NPARAMS || v[14].len / 8 < rows * I_NFIELDS
        || v[15].len / 4 < rows * n || v[16].len / 8 < rows * n || v[2].len / 8 < rows + 1
        || v[11].len / 8 < n || v[8].len / 8 < rows || v[9].len / 8 < rows
        || v[7].len / 8 < rows || v[4].len / 8 < rows || v[5].len / 8 < rows
        || v[6].len / 8 < rows * OFF_N) {
        PyErr_SetString(PyExc_ValueError, "kernel: array sizes do not agree");
        goto done;
    }
    {
        Py_ssize_t k = n > 0 ? n : 1;
        Scratch w;
        w.cand = malloc(sizeof(Py_ssize_t) * 2 * k);
        w.lastj = malloc(sizeof(Py_ssize_t) * 3 * k);
        w.dp = malloc(sizeof(double) * 3 * k);
        w.from = malloc(sizeof(int) * 3 * k);
        w.beyond = malloc(sizeof(int) * k);
        w.rr = malloc(sizeof(double) * (k + 2));
        w.ss = malloc(sizeof(double) * (k + 2));
        int32_t *pos2 = malloc(sizeof(int32_t) * 3 * k);
        double *off2 = malloc(sizeof(double) * 3 * k);
        double *log_n = malloc(sizeof(double) * (k + 3));
        if (!w.cand || !w.lastj || !w.dp || !w.from || !w.beyond || !w.rr || !w.ss || !pos2
            || !off2 || !log_n) {
            PyErr_NoMemory();
        } else {
            for (Py_ssize_t i = 0; i < k + 3; i++) log_n[i] = log((double)i);
            c.log_n = log_n;
            c.loss = exp(-c.p[P_LOST]);
            c.due = -log1p(-1.0 * (1.0 - c.loss));
            c.rtt0 = isnan(c.p[P_A0]) ? 0.0 : rtt_cost(c.p[P_A0], c.p[P_RTT_MU], c.p[P_RTT_SIGMA]);
            Py_BEGIN_ALLOW_THREADS
            for (Py_ssize_t r = 0; r < rows; r++) {
                Res a[3];
                const double *of = c.off + r * OFF_N;
                int slips = of[OFF_SLIP_SD] > 0;
                one(&c, &w, r, 0, of[OFF_SD], slips ? of[OFF_CORE_COST] : 0.0, &a[0], pos2, off2);
                one(&c, &w, r, 1, of[OFF_SD], 0.0, &a[1], pos2 + n, off2 + n);
                int pick = a[1].alone < a[0].alone;
                if (slips) {  /* the shift may have slipped: fitted within the slips' spread */
                    one(&c, &w, r, 0, of[OFF_SLIP_SD], of[OFF_SLIP_COST], &a[2], pos2 + 2 * n,
                        off2 + 2 * n);
                    if (a[2].alone < a[pick].alone) pick = 2;
                }
                Res *x = &a[pick];
                obase[r] = x->base;
                double *info = oinfo + r * I_NFIELDS;
                info[I_K0] = x->k0; info[I_LOST] = x->lost; info[I_UNEXPL] = x->unexpl;
                info[I_RST] = x->rst; info[I_SHIFT] = x->shift; info[I_ALONE] = x->alone;
                info[I_NIN] = x->n_in; info[I_S] = x->big_s; info[I_SBAR] = x->s_bar;
                info[I_TAIL] = x->tail; info[I_TAILC] = x->tail_cost;
                memcpy(opos + r * n, pos2 + pick * n, sizeof(int32_t) * n);
                memcpy(ooff + r * n, off2 + pick * n, sizeof(double) * n);
            }
            Py_END_ALLOW_THREADS
            ret = Py_None;
            Py_INCREF(ret);
        }
        free(w.cand); free(w.lastj); free(w.dp); free(w.from); free(w.beyond); free(w.rr);
        free(w.ss);
        free(pos2); free(off2); free(log_n);
    }
done:
    for (int i = 0; i < NARGS; i++) PyBuffer_Release(&v[i]);
    return ret;
}

/* n float64 buffers from o (those from index `writable` on, writable); on
 * failure every buffer taken is released and -1 returned. */
static int get_all(PyObject **o, Py_buffer *v, int n, int writable) {
    for (int got = 0; got < n; got++)
        if (get(o[got], &v[got], got >= writable, 8, "array") < 0) {
            for (int i = 0; i < got; i++) PyBuffer_Release(&v[i]);
            return -1;
        }
    return 0;
}

/* theta(n_in, big_s, s_bar, grid, logw, ll_out, lse_out[, cost, margin]): per
 * row r and scale g, the log-likelihood of the queueing delays, lam = 1 /
 * (grid[g] + s_bar[r]): ll[r, g] = (n_in - 1) log lam - lam big_s - log n_in;
 * and per row the log of sum_g exp(ll[r, g] + logw[g]) (logw: normalised).
 *
 * Given cost (rows x K: each row's cost beside the queueing, K ways of
 * counting it, e.g. with the header as a signature or as a variant sees it)
 * and a finite margin, rows that cannot come within ``margin`` nats of the
 * best in any of the K ways are not computed: ll <= ub = (n_in - 1) log lam_0
 * - log n_in for every g (lam is largest at the smallest scale, grid[0]), and
 * ll <= (n_in - 1) (log((n_in - 1) / big_s) - 1) - log n_in (the maximum over
 * every lam; the mixture is at most its largest term, logw summing to 1), so
 * cost - ub bounds a row's total from below; a row whose bound exceeds, in
 * every way, the exact total of the row of least bound in that way by more
 * than margin gets ll = lse = ub (its total is then reported as that bound:
 * lower than its true total, still margin nats worse than the best). The
 * grid must be increasing. Returns the number of rows given their bound. */
static void theta_row(double n_in, double big_s, double s_bar, const double *grid,
                      const double *logw, Py_ssize_t g, double *row, double *lse) {
    double mx = -INFINITY;
    for (Py_ssize_t k = 0; k < g; k++) {
        double lam = 1.0 / (grid[k] + s_bar);
        row[k] = (n_in - 1.0) * log(lam) - lam * big_s - log(n_in);
        double a = row[k] + logw[k];
        if (a > mx) mx = a;
    }
    if (!isfinite(mx)) { *lse = mx; return; }
    double acc = 0.0;
    for (Py_ssize_t k = 0; k < g; k++) acc += exp(row[k] + logw[k] - mx);
    *lse = mx + log(acc);
}

static PyObject *theta(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o[8] = {NULL};
    double margin = INFINITY;
    if (!PyArg_ParseTuple(args, "OOOOOOO|Od", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6],
                          &o[7], &margin))
        return NULL;
    int nb = (o[7] != NULL && isfinite(margin)) ? 8 : 7;
    Py_buffer v[8];
    /* v: 0 n_in, 1 big_s, 2 s_bar, 3 grid, 4 logw, [5 cost], then ll, lse */
    PyObject *order[8] = {o[0], o[1], o[2], o[3], o[4], o[7], o[5], o[6]};
    if (nb == 7) { order[5] = o[5]; order[6] = o[6]; }
    if (get_all(order, v, nb, nb - 2) < 0) return NULL;
    Py_buffer *v_ll = &v[nb - 2], *v_lse = &v[nb - 1];
    Py_ssize_t m = v[0].len / 8, g = v[3].len / 8;
    Py_ssize_t kk = (nb == 8 && m > 0) ? v[5].len / 8 / m : 0;
    PyObject *ret = NULL;
    Py_ssize_t bounded = 0;  /* rows given their bound */
    if (v[1].len / 8 < m || v[2].len / 8 < m || v[4].len / 8 < g || v_ll->len / 8 < m * g
        || v_lse->len / 8 < m || g < 1 || (nb == 8 && (kk < 1 || kk > 8 || v[5].len / 8 != m * kk))) {
        PyErr_SetString(PyExc_ValueError, "kernel: array sizes do not agree");
    } else {
        const double *n_in = v[0].buf, *big_s = v[1].buf, *s_bar = v[2].buf;
        const double *grid = v[3].buf, *logw = v[4].buf;
        double *ll = v_ll->buf, *lse = v_lse->buf;
        if (nb == 7) {
            for (Py_ssize_t r = 0; r < m; r++)
                theta_row(n_in[r], big_s[r], s_bar[r], grid, logw, g, ll + r * g, &lse[r]);
        } else {
            const double *cost = v[5].buf;
            Py_ssize_t best[8];
            double best_lb[8], bar[8];
            char *done = calloc((size_t)m + 1, 1);
            if (!done) { PyErr_NoMemory(); goto out; }
            for (Py_ssize_t j = 0; j < kk; j++) { best[j] = -1; best_lb[j] = INFINITY; }
            for (Py_ssize_t r = 0; r < m; r++) {
                double ub = (n_in[r] - 1.0) * log(1.0 / (grid[0] + s_bar[r])) - log(n_in[r]);
                /* and at most the likelihood's maximum over every lam > 0,
                   at lam = (n_in - 1) / big_s: tighter for a row whose
                   queueing delays are large (a row that fits badly) */
                if (n_in[r] > 1.0 && big_s[r] > 0.0) {
                    double k = n_in[r] - 1.0;
                    double uc = k * (log(k / big_s[r]) - 1.0) - log(n_in[r]);
                    if (uc < ub) ub = uc;
                }
                lse[r] = ub;  /* kept for the second pass */
                for (Py_ssize_t j = 0; j < kk; j++) {
                    double lb = cost[r * kk + j] - ub;
                    if (lb < best_lb[j]) { best_lb[j] = lb; best[j] = r; }
                }
            }
            /* the row of least bound in each way, computed exactly, sets its bar */
            for (Py_ssize_t j = 0; j < kk; j++) {
                bar[j] = INFINITY;
                Py_ssize_t r = best[j];
                if (r < 0) continue;
                if (!done[r]) {
                    theta_row(n_in[r], big_s[r], s_bar[r], grid, logw, g, ll + r * g, &lse[r]);
                    done[r] = 1;
                }
                bar[j] = cost[r * kk + j] - lse[r] + margin;
            }
            for (Py_ssize_t r = 0; r < m; r++) {
                if (done[r]) continue;
                double ub = lse[r];
                int hopeless = 1;
                for (Py_ssize_t j = 0; j < kk; j++)
                    if (cost[r * kk + j] - ub <= bar[j]) { hopeless = 0; break; }
                if (hopeless) {
                    for (Py_ssize_t k = 0; k < g; k++) ll[r * g + k] = ub;
                    bounded++;
                    continue;
                }
                theta_row(n_in[r], big_s[r], s_bar[r], grid, logw, g, ll + r * g, &lse[r]);
            }
            free(done);
        }
        ret = PyLong_FromSsize_t(bounded);
    }
out:
    for (int i = 0; i < nb; i++) PyBuffer_Release(&v[i]);
    return ret;
}

/* lse(a, logw, out): per row r of a (rows x g), log sum_g exp(a[r, g] + logw[g]). */
static PyObject *lse(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o[3];
    if (!PyArg_ParseTuple(args, "OOO", &o[0], &o[1], &o[2])) return NULL;
    Py_buffer v[3];
    if (get_all(o, v, 3, 2) < 0) return NULL;
    Py_ssize_t g = v[1].len / 8, m = v[2].len / 8;
    PyObject *ret = NULL;
    if (g < 1 || v[0].len / 8 < m * g) {
        PyErr_SetString(PyExc_ValueError, "kernel: array sizes do not agree");
    } else {
        const double *a = v[0].buf, *logw = v[1].buf;
        double *out = v[2].buf;
        for (Py_ssize_t r = 0; r < m; r++) {
            const double *row = a + r * g;
            double mx = -INFINITY;
            for (Py_ssize_t k = 0; k < g; k++)
                if (row[k] + logw[k] > mx) mx = row[k] + logw[k];
            if (!isfinite(mx)) { out[r] = mx; continue; }
            double acc = 0.0;
            for (Py_ssize_t k = 0; k < g; k++) acc += exp(row[k] + logw[k] - mx);
            out[r] = mx + log(acc);
        }
        ret = Py_None;
        Py_INCREF(ret);
    }
    for (int i = 0; i < 3; i++) PyBuffer_Release(&v[i]);
    return ret;
}

#define SKIP 40.0

/* What a variant of a signature that stops earlier saves (match.py's
 * _variant_gain): log((1 + e^x) / 2), x = tailc tries - log(2 (tail + 1)),
 * with numpy's logaddexp(0, x). */
static double vgain(double tail, double tailc, double tries) {
    const double ln2 = 0.6931471805599453;
    double x = tailc * tries - (log1p(tail) + ln2);
    double la = (x == 0.0) ? ln2 : (x < 0.0 ? log1p(exp(x)) : x + log1p(exp(-x)));
    return la - ln2;
}

/* The same for one kernel row, from the kernel's info: nothing missing after
 * the last packet seen (or the RST on time) saves a constant. */
static double row_gain(double tail, double tailc, double rst) {
    static double none = NAN;
    if (rst == 1.0) tail = tailc = 0.0;
    if (tail == 0.0 && tailc == 0.0) {
        if (isnan(none)) none = vgain(0.0, 0.0, 1.0);
        return none;
    }
    return vgain(tail, tailc, 1.0);
}

/* beside(base, info, hdr, var, out): per row r (match.py's _Beside): out[r, 0]
 * = base + hdr (the row as its signature), out[r, 1] = base - gain + var (as
 * a variant of it that may stop earlier; no gain when the RST came on time). */
static PyObject *beside(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o[5];
    if (!PyArg_ParseTuple(args, "OOOOO", &o[0], &o[1], &o[2], &o[3], &o[4])) return NULL;
    Py_buffer v[5];
    if (get_all(o, v, 5, 4) < 0) return NULL;
    Py_ssize_t m = v[0].len / 8;
    PyObject *ret = NULL;
    if (v[1].len / 8 < m * I_NFIELDS || v[2].len / 8 < m || v[3].len / 8 < m
        || v[4].len / 8 < 2 * m) {
        PyErr_SetString(PyExc_ValueError, "kernel: array sizes do not agree");
    } else {
        const double *base = v[0].buf, *info = v[1].buf, *hdr = v[2].buf, *var = v[3].buf;
        double *out = v[4].buf;
        for (Py_ssize_t r = 0; r < m; r++) {
            const double *in = info + r * I_NFIELDS;
            double gain = row_gain(in[I_TAIL], in[I_TAILC], in[I_RST]);
            out[2 * r] = base[r] + hdr[r];
            out[2 * r + 1] = base[r] - gain + var[r];
        }
        ret = Py_None;
        Py_INCREF(ret);
    }
    for (int i = 0; i < 5; i++) PyBuffer_Release(&v[i]);
    return ret;
}

/* post1(alone, tail, tailc, rst, inv, idx, stops, hdr, var, prior, scalars,
 * total, post, lpost, success): match.py's _score_one after the timing, for
 * one observed state. alone, tail, tailc, rst: per kernel row (alone = base
 * - mix; tail, tailc, rst: the kernel's info columns); inv: row ->
 * unique row; idx: row -> signature; stops: per signature, 1 if its variant
 * may stop earlier; hdr, var, prior: per signature; scalars: lse_prior, g
 * (the generic timing's cost), gen_hdr, the unknown's log odds, the three
 * log weights of the unknown's mixture. Out, per signature: total (inf
 * without a row), post, lpost (log posterior before normalising), success
 * (0/1, float). Returns (unknown cost, p_unknown). Sums are sequential
 * (numpy's are pairwise: the last digits may differ). */
static PyObject *post1(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o[15];
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOOOO", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5],
                          &o[6], &o[7], &o[8], &o[9], &o[10], &o[11], &o[12], &o[13], &o[14]))
        return NULL;
    Py_buffer v[15];
    if (get_all(o, v, 15, 11) < 0) return NULL;
    Py_ssize_t nu = v[0].len / 8, rows = v[4].len / 8, n = v[7].len / 8;
    PyObject *ret = NULL;
    double *work = NULL, *gains = NULL;
    if (v[1].len / 8 < nu || v[2].len / 8 < nu || v[3].len / 8 < nu || v[5].len / 8 != rows
        || v[6].len / 8 < n || v[8].len / 8 < n || v[9].len / 8 < n || v[10].len / 8 < 7
        || v[11].len / 8 < n || v[12].len / 8 < n || v[13].len / 8 < n || v[14].len / 8 < n) {
        PyErr_SetString(PyExc_ValueError, "kernel: array sizes do not agree");
        goto out;
    }
    {
        const double *alone = v[0].buf, *tail = v[1].buf, *tailc = v[2].buf, *rst = v[3].buf,
                     *stops = v[6].buf, *hdr = v[7].buf, *var = v[8].buf, *prior = v[9].buf,
                     *sc = v[10].buf;
        const int64_t *inv = v[4].buf, *idx = v[5].buf;
        double *total = v[11].buf, *post = v[12].buf, *lpost = v[13].buf, *succ = v[14].buf;
        const double lse_prior = sc[0], g = sc[1], gen_hdr = sc[2], log_odds = sc[3];
        work = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
        if (!work) { PyErr_NoMemory(); goto out; }
        gains = malloc(sizeof(double) * (size_t)(nu > 0 ? nu : 1));
        if (!gains) { PyErr_NoMemory(); goto out; }
        for (Py_ssize_t u = 0; u < nu; u++) gains[u] = row_gain(tail[u], tailc[u], rst[u]);
        for (Py_ssize_t i = 0; i < n; i++) {
            total[i] = INFINITY;
            work[i] = INFINITY;  /* the variant's timing */
            succ[i] = 0.0;
        }
        for (Py_ssize_t r = 0; r < rows; r++) {
            Py_ssize_t u = inv[r], i = idx[r];
            if (u < 0 || u >= nu || i < 0 || i >= n) {
                PyErr_SetString(PyExc_ValueError, "kernel: row index out of range");
                goto out;
            }
            double t = alone[u];
            double gain = stops[i] != 0.0 ? gains[u] : 0.0;
            total[i] = t + hdr[i];
            work[i] = t - gain;
            succ[i] = (t + (hdr[i] - gen_hdr)) < g ? 1.0 : 0.0;
        }
        /* the unknown stack (match.py's _unknown_cost) */
        double mx_k = -INFINITY, mx_v = -INFINITY;
        for (Py_ssize_t i = 0; i < n; i++) {
            double lp = prior[i] - lse_prior;
            double a = lp - hdr[i];
            if (a > mx_k) mx_k = a;
            if (isfinite(work[i])) {
                double b = (lp - work[i]) - var[i];
                if (b > mx_v) mx_v = b;
            }
        }
        /* terms below e^-SKIP of the largest (which adds 1) are left out:
           a few thousand of them add less than 1e-14 to the sum */
        double acc_k = 0.0, acc_v = 0.0;
        for (Py_ssize_t i = 0; i < n; i++) {
            double lp = prior[i] - lse_prior;
            double a = (lp - hdr[i]) - mx_k;
            if (isfinite(mx_k) && a > -SKIP) acc_k += exp(a);
            if (isfinite(work[i]) && isfinite(mx_v)) {
                double b = ((lp - work[i]) - var[i]) - mx_v;
                if (b > -SKIP) acc_v += exp(b);
            }
        }
        double known_hdr = isfinite(mx_k) ? -(mx_k + log(acc_k)) : -mx_k;
        double variant = (rows > 0) ? (isfinite(mx_v) ? -(mx_v + log(acc_v)) : -mx_v)
                                    : g + gen_hdr;
        double parts[3] = {g + gen_hdr, g + known_hdr, variant};
        double mx = -INFINITY, acc = 0.0;
        for (int k = 0; k < 3; k++)
            if (sc[4 + k] - parts[k] > mx) mx = sc[4 + k] - parts[k];
        for (int k = 0; k < 3; k++) acc += isfinite(mx) ? exp(sc[4 + k] - parts[k] - mx) : 0.0;
        double unknown = isfinite(mx) ? -(mx + log(acc)) : -mx;
        /* the posterior */
        double post_unk = log_odds - unknown + lse_prior;
        double mx_f = -INFINITY;
        for (Py_ssize_t i = 0; i < n; i++) {
            lpost[i] = prior[i] - total[i];
            if (isfinite(total[i]) && isfinite(lpost[i]) && lpost[i] > mx_f) mx_f = lpost[i];
        }
        double lse_f = mx_f;
        if (isfinite(mx_f)) {
            double s = 0.0;
            for (Py_ssize_t r = 0; r < rows; r++) {
                double a = lpost[idx[r]] - mx_f;
                if (a > -SKIP) s += exp(a);
            }
            lse_f = mx_f + log(s);
        }
        double norm;
        if (lse_f == post_unk) norm = lse_f + 0.6931471805599453;
        else if (lse_f > post_unk) norm = lse_f + log1p(exp(post_unk - lse_f));
        else norm = post_unk + log1p(exp(lse_f - post_unk));
        for (Py_ssize_t i = 0; i < n; i++) {
            double a = lpost[i] - norm;
            post[i] = a > -746.0 ? exp(a) : 0.0;  /* exp underflows to 0 there */
        }
        ret = Py_BuildValue("dd", unknown, exp(post_unk - norm));
    }
out:
    free(work);
    free(gains);
    for (int i = 0; i < 15; i++) PyBuffer_Release(&v[i]);
    return ret;
}

static PyMethodDef methods[] = {
    {"timing", timing, METH_VARARGS, "Timing of one observed series against every signature row."},
    {"theta", theta, METH_VARARGS, "Queueing log-likelihoods per row and scale, and their mixture."},
    {"lse", lse, METH_VARARGS, "Row-wise log-sum-exp with weights."},
    {"beside", beside, METH_VARARGS, "Rows' costs beside the queueing, as signature and variant."},
    {"post1", post1, METH_VARARGS, "Totals, unknown stack and posterior of one observed state."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernel", NULL, -1, methods};

PyMODINIT_FUNC PyInit__kernel(void) { return PyModule_Create(&module); }
