// The cells of the CUDA recurrence kernels (recurrence.cu): rnncore.cells' step math for one
// hidden unit j of one batch row, on values in registers. The kernels do every load and store,
// so a cell is only its arithmetic and these constants:
//   GATES        gate blocks of a row (G = GATES * H), in rnncore.cells' order.
//   GATES_ARE_H  the activated gate is h itself (the RNN): forward's h is written over the
//                gates only; backward reads h there, leaves it, and writes dhw into dxw.
// and two functions:
//   T forward(T g[GATES], const T rec[GATES], const Prev<T>& p, T& saved)
//       g: in x_t Wx + b, out the activated gates; rec: h_{t-1} Wh (+ bh) of each gate;
//       returns h_t; sets saved to what the cell keeps for backward (LSTM c_t, GRU hn_t).
//   void backward(T g[GATES], T dx[GATES], T d, const Prev<T>& p, T saved, T& carry)
//       g: in the activated gates, out dhw, the gradient of the recurrent pre-activations;
//       dx: out dxw where it differs from dhw (the GRU; else left alone); d: the gradient
//       reaching h_t through Wh and from the layer above; carry: a per-unit gradient handed
//       from step t+1 to step t (in) and on to step t-1 (out): the LSTM's dc, the GRU's part
//       of the gradient at h that bypasses Wh (d * z); the RNN has none.
// Prev holds the states before the step; a cell reads only those it has.
#pragma once
#include "common.cuh"

template <typename T>
struct Prev {
    T h;  // h_{t-1}
    T c;  // the LSTM's c_{t-1}
};

// h = tanh(a + rec). Saves nothing: hs is the gates buffer.
struct RnnCell {
    static constexpr int GATES = 1;
    static constexpr bool GATES_ARE_H = true;

    template <typename T>
    __device__ static T forward(T (&g)[1], const T (&rec)[1], const Prev<T>&, T&) {
        g[0] = tanh_(g[0] + rec[0]);
        return g[0];
    }

    template <typename T>
    __device__ static void backward(T (&g)[1], T (&)[1], T d, const Prev<T>&, T, T&) {
        T h = g[0];
        g[0] = d * (T(1) - h * h);
    }
};

// Gates i, f, g, o; c = f * c_prev + i * g, h = o * tanh(c). Saves c; carries dc.
struct LstmCell {
    static constexpr int GATES = 4;
    static constexpr bool GATES_ARE_H = false;

    template <typename T>
    __device__ static T forward(T (&g)[4], const T (&rec)[4], const Prev<T>& p, T& c) {
        g[0] = sigmoid_(g[0] + rec[0]);
        g[1] = sigmoid_(g[1] + rec[1]);
        g[2] = tanh_(g[2] + rec[2]);
        g[3] = sigmoid_(g[3] + rec[3]);
        c = g[1] * p.c + g[0] * g[2];
        return g[3] * tanh_(c);
    }

    // dxw is dhw: dx is left alone.
    template <typename T>
    __device__ static void backward(T (&g)[4], T (&)[4], T d, const Prev<T>& p, T c, T& dc) {
        T i = g[0], f = g[1], gg = g[2], o = g[3];
        T tanh_c = tanh_(c);
        T dc_t = dc + d * o * (T(1) - tanh_c * tanh_c);
        g[0] = dc_t * gg * i * (T(1) - i);
        g[1] = dc_t * p.c * f * (T(1) - f);
        g[2] = dc_t * i * (T(1) - gg * gg);
        g[3] = d * tanh_c * o * (T(1) - o);
        dc = dc_t * f;
    }
};

// Gates r, z, n (PyTorch/cuDNN form): r, z = sigmoid(a + rec), n = tanh(a_n + r * hn) with
// hn = h_prev Wh_n + bh_n, h = (1 - z) * n + z * h_prev. Saves hn; carries d * z, the part of
// the gradient at h_prev that does not pass through Wh.
struct GruCell {
    static constexpr int GATES = 3;
    static constexpr bool GATES_ARE_H = false;

    template <typename T>
    __device__ static T forward(T (&g)[3], const T (&rec)[3], const Prev<T>& p, T& hn) {
        g[0] = sigmoid_(g[0] + rec[0]);
        g[1] = sigmoid_(g[1] + rec[1]);
        hn = rec[2];
        g[2] = tanh_(g[2] + g[0] * hn);
        return g[2] + g[1] * (p.h - g[2]);  // (1 - z) * n + z * h_prev, as rnncore.cells computes it
    }

    // dhw and dxw differ in the n block only: d(a_n) = dn, d(hn) = dn * r.
    template <typename T>
    __device__ static void backward(T (&g)[3], T (&dx)[3], T d, const Prev<T>& p, T hn, T& carry) {
        T r = g[0], z = g[1], n = g[2];
        T total = d + carry;
        T dn = total * (T(1) - z) * (T(1) - n * n);
        g[0] = dx[0] = dn * hn * r * (T(1) - r);
        g[1] = dx[1] = total * (p.h - n) * z * (T(1) - z);
        g[2] = dn * r;
        dx[2] = dn;
        carry = total * z;
    }
};
