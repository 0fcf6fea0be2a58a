// gpunet fused CUDA kernels: per-element maths.
//
// Every function here is `__host__ __device__`, so the same source is
//   * the `preamble` of CuPy ElementwiseKernels (compiled by NVRTC at run time, see kernels.py), and
//   * compiled by nvcc into a host program (-DGPUNET_HOST_HARNESS) that the CPU test suite runs and
//     compares against the Array-API reference maths in gpunet/activations.py, losses.py, optim.py.
//
// Activation codes: 0 linear, 1 relu, 2 sigmoid, 3 tanh (gpunet/kernels.py: ACT_CODES).
#ifndef GPUNET_KERNELS_CU
#define GPUNET_KERNELS_CU

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define GN_HD __host__ __device__ inline
#else
#define GN_HD inline
#include <cmath>
#endif

template <typename T> GN_HD T gn_exp(T x) { return exp(x); }
template <typename T> GN_HD T gn_tanh(T x) { return tanh(x); }
template <typename T> GN_HD T gn_sqrt(T x) { return sqrt(x); }
template <typename T> GN_HD T gn_log(T x) { return log(x); }
template <typename T> GN_HD T gn_log1p(T x) { return log1p(x); }

// a = f(z)
template <typename T> GN_HD T gn_act(T z, int act) {
    switch (act) {
        case 1: return z > T(0) ? z : T(0);
        case 2: {  // overflow-free logistic
            T e = gn_exp<T>(z >= T(0) ? -z : z);
            return z >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
        }
        case 3: return gn_tanh<T>(z);
        default: return z;
    }
}

// f'(z) written with a = f(z)
template <typename T> GN_HD T gn_act_grad(T a, int act) {
    switch (act) {
        case 1: return a > T(0) ? T(1) : T(0);
        case 2: return a * (T(1) - a);
        case 3: return T(1) - a * a;
        default: return T(1);
    }
}

// One Adam/AdamW element, torch.optim semantics. step_size = lr / (1 - beta1^t),
// bc2_sqrt = sqrt(1 - beta2^t); decoupled != 0 is AdamW (p *= 1 - lr*wd), otherwise coupled L2.
template <typename T>
GN_HD void gn_adam_update(T& p, T g, T& m, T& v, T& vmax, T lr, T beta1, T beta2, T eps, T wd,
                          T step_size, T bc2_sqrt, int amsgrad, int decoupled) {
    if (decoupled) {
        p *= T(1) - lr * wd;
    } else if (wd != T(0)) {
        g = g + wd * p;
    }
    m += (T(1) - beta1) * (g - m);
    v = v * beta2 + (T(1) - beta2) * g * g;
    T vv = v;
    if (amsgrad) {
        if (v > vmax) vmax = v;
        vv = vmax;
    }
    p -= step_size * (m / (gn_sqrt<T>(vv) / bc2_sqrt + eps));
}

// One SGD element, torch.optim.SGD semantics (first: the first step, when buf = g).
template <typename T>
GN_HD void gn_sgd_update(T& p, T g, T& buf, T lr, T momentum, T dampening, T wd, int nesterov, int first) {
    if (wd != T(0)) g = g + wd * p;
    if (momentum != T(0)) {
        T b = first ? g : momentum * buf + (T(1) - dampening) * g;
        buf = b;
        g = nesterov ? g + momentum * b : b;
    }
    p -= lr * g;
}

// Softmax + cross-entropy for one row of k logits: writes a = softmax(z), delta = (a - y) * inv_n
// and returns the row's loss -sum(y * log_softmax(z)).
template <typename T>
GN_HD T gn_softmax_xent_row(const T* z, const T* y, T* a, T* delta, int k, T inv_n) {
    T zmax = z[0];
    for (int j = 1; j < k; ++j) zmax = z[j] > zmax ? z[j] : zmax;
    T sum = T(0);
    for (int j = 0; j < k; ++j) {
        T e = gn_exp<T>(z[j] - zmax);
        a[j] = e;
        sum += e;
    }
    T log_sum = gn_log<T>(sum);
    T loss = T(0);
    for (int j = 0; j < k; ++j) {
        a[j] = a[j] / sum;
        delta[j] = (a[j] - y[j]) * inv_n;
        loss -= y[j] * (z[j] - zmax - log_sum);
    }
    return loss;
}

// 1 when the row's largest output and largest target sit at the same index (the first of equal maxima, as
// numpy.argmax): one correct prediction, as gpunet.losses.correct counts it for cross-entropy.
template <typename T> GN_HD T gn_row_hit(const T* a, const T* y, int k) {
    int ia = 0, iy = 0;
    for (int j = 1; j < k; ++j) {
        if (a[j] > a[ia]) ia = j;
        if (y[j] > y[iy]) iy = j;
    }
    return ia == iy ? T(1) : T(0);
}

// Sigmoid + binary cross-entropy for one element from the logit z.
template <typename T> GN_HD T gn_sigmoid_xent(T z, T y, T& a, T& delta, T inv_n) {
    a = gn_act<T>(z, 2);
    delta = (a - y) * inv_n;
    T absz = z >= T(0) ? z : -z;
    return (z > T(0) ? z : T(0)) - z * y + gn_log1p<T>(gn_exp<T>(-absz));
}

// Dropout masks from a counter-based generator: element i of a mask drawn with key `seed` is kept when
// u(seed, i) >= rate, where u is the top 53 bits of splitmix64(seed + (i + 1) * golden) as a double in [0, 1).
// No device state: the key comes from the model's seeded host generator (saved with the model, rolled back
// with an epoch), so masks are reproducible and per model. gpunet/kernels.py: dropout_reference is the same
// generator in CuPy/NumPy expressions (the self-check compares the two exactly).
GN_HD double gn_uniform(unsigned long long seed, unsigned long long i) {
    unsigned long long x = seed + (i + 1ULL) * 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    x = x ^ (x >> 31);
    return (double)(x >> 11) * (1.0 / 9007199254740992.0);  // 2^-53
}

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
// ---------------------------------------------------------------------------------- kernels
// Launched from gpunet/kernels.py through cupy.RawModule (name_expressions instantiate T).
#define GN_GRID_STRIDE(i, n) \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); i += (long long)blockDim.x * gridDim.x)

// z (rows, cols) <- f(z + b) in place. The column is i % cols: a 64-bit remainder is a long emulated
// sequence, so below 2^31 elements the loop runs on a 32-bit unsigned index (i + stride < 2^31 + 65535 * 1024
// cannot wrap); only larger arrays take the 64-bit path.
template <typename T> __global__ void gn_bias_act(T* z, const T* b, long long n, int cols, int act) {
    if (n < 2147483648LL) {
        const unsigned int n32 = (unsigned int)n, c32 = (unsigned int)cols;
        for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n32; i += blockDim.x * gridDim.x)
            z[i] = gn_act<T>(z[i] + b[i % c32], act);
    } else {
        GN_GRID_STRIDE(i, n) z[i] = gn_act<T>(z[i] + b[i % cols], act);
    }
}

// a <- f(z)
template <typename T> __global__ void gn_activation(const T* z, T* a, long long n, int act) {
    GN_GRID_STRIDE(i, n) a[i] = gn_act<T>(z[i], act);
}

// delta <- delta * f'(a) in place
template <typename T> __global__ void gn_act_backward(T* delta, const T* a, long long n, int act) {
    GN_GRID_STRIDE(i, n) delta[i] *= gn_act_grad<T>(a[i], act);
}

// delta <- delta * s (dropout masks)
template <typename T> __global__ void gn_scale(T* a, const T* s, long long n) {
    GN_GRID_STRIDE(i, n) a[i] *= s[i];
}

// Adam/AdamW over the flat buffers; hyper-parameters as values (eager launches)
template <typename T>
__global__ void gn_adam(T* p, const T* g, T* m, T* v, T* vmax, long long n, T lr, T beta1, T beta2, T eps, T wd,
                        T step_size, T bc2_sqrt, int amsgrad, int decoupled) {
    GN_GRID_STRIDE(i, n) {
        T vm = amsgrad ? vmax[i] : T(0);
        gn_adam_update<T>(p[i], g[i], m[i], v[i], vm, lr, beta1, beta2, eps, wd, step_size, bc2_sqrt, amsgrad, decoupled);
        if (amsgrad) vmax[i] = vm;
    }
}

// Adam/AdamW reading lr, betas, eps, wd and the step t from device memory hp[0..5], so a captured
// CUDA graph replays correctly while t advances (gn_tick) and the learning rate is rewritten.
template <typename T>
__global__ void gn_adam_dev(T* p, const T* g, T* m, T* v, T* vmax, long long n, const double* hp, int amsgrad,
                            int decoupled) {
    const double lr = hp[0], beta1 = hp[1], beta2 = hp[2], t = hp[5];
    const T step_size = (T)(lr / (1.0 - pow(beta1, t)));
    const T bc2_sqrt = (T)sqrt(1.0 - pow(beta2, t));
    GN_GRID_STRIDE(i, n) {
        T vm = amsgrad ? vmax[i] : T(0);
        gn_adam_update<T>(p[i], g[i], m[i], v[i], vm, (T)lr, (T)beta1, (T)beta2, (T)hp[3], (T)hp[4], step_size,
                          bc2_sqrt, amsgrad, decoupled);
        if (amsgrad) vmax[i] = vm;
    }
}

// hp[5] += 1: the optimizer step counter, advanced on the device (one thread)
extern "C" __global__ void gn_tick(double* hp) {
    if (blockIdx.x == 0 && threadIdx.x == 0) hp[5] += 1.0;
}

template <typename T>
__global__ void gn_sgd(T* p, const T* g, T* buf, long long n, T lr, T momentum, T dampening, T wd, int nesterov,
                       int first) {
    GN_GRID_STRIDE(i, n) {
        T b = momentum != T(0) ? buf[i] : T(0);
        gn_sgd_update<T>(p[i], g[i], b, lr, momentum, dampening, wd, nesterov, first);
        if (momentum != T(0)) buf[i] = b;
    }
}

// out <- 1/keep where u(seed, i) >= rate, else 0 (inverted dropout)
template <typename T>
__global__ void gn_dropout(T* out, long long n, unsigned long long seed, double rate, T scale) {
    GN_GRID_STRIDE(i, n) out[i] = gn_uniform(seed, (unsigned long long)i) >= rate ? scale : T(0);
}

// One thread per row: softmax, (a - y) / rows, and out[r] = (row loss / rows, 1 if the row is classified
// correctly): one column sum of `out` is then (mean loss, number correct)
template <typename T>
__global__ void gn_softmax_xent(const T* z, const T* y, T* a, T* delta, T* out, int rows, int k, T inv_n) {
    GN_GRID_STRIDE(r, rows) {
        const long long o = r * (long long)k;
        out[2 * r] = gn_softmax_xent_row<T>(z + o, y + o, a + o, delta + o, k, inv_n) * inv_n;
        out[2 * r + 1] = gn_row_hit<T>(a + o, y + o, k);
    }
}

// per element: sigmoid, (a - y) / n, and out[i] = (the element's loss / n, 1 if (a > 0.5) == (y > 0.5))
template <typename T>
__global__ void gn_sigmoid_xent_k(const T* z, const T* y, T* a, T* delta, T* out, long long n, T inv_n) {
    GN_GRID_STRIDE(i, n) {
        out[2 * i] = gn_sigmoid_xent<T>(z[i], y[i], a[i], delta[i], inv_n) * inv_n;
        out[2 * i + 1] = (a[i] > T(0.5)) == (y[i] > T(0.5)) ? T(1) : T(0);
    }
}
#endif  // kernels

#ifdef GPUNET_HOST_HARNESS
// Host harness: `harness MODE DTYPE IN OUT` reads little-endian doubles from IN, applies one of the
// functions above element by element in DTYPE (f32 or f64) and writes doubles to OUT.
//   act/act_grad:   IN = [code, n, x...]                       OUT = [f(x)...]
//   adam:           IN = [n, lr, b1, b2, eps, wd, step, ams, dec, p.., g.., m.., v.., vmax..]
//                   OUT = [p.., m.., v.., vmax..]
//   sgd:            IN = [n, lr, mom, damp, wd, nesterov, first, p.., g.., buf..]   OUT = [p.., buf..]
//   softmax_xent:   IN = [rows, k, z.., y..]                   OUT = [loss_sum, a.., delta..]
//   sigmoid_xent:   IN = [n, z.., y..]                         OUT = [loss_sum, a.., delta..]
//   row_hit:        IN = [rows, k, a.., y..]                   OUT = [1 if argmax(a) == argmax(y)...]
//   uniform:        IN = [seed_hi32, seed_lo32, n]             OUT = [u(seed, i)...] (dropout generator)
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

static std::vector<double> read_all(const char* path) {
    std::vector<double> out;
    FILE* f = std::fopen(path, "rb");
    if (!f) { std::perror(path); std::exit(2); }
    double x;
    while (std::fread(&x, sizeof x, 1, f) == 1) out.push_back(x);
    std::fclose(f);
    return out;
}

template <typename T> static std::vector<double> run(const char* mode, const std::vector<double>& in) {
    std::vector<double> out;
    if (!std::strcmp(mode, "act") || !std::strcmp(mode, "act_grad")) {
        int code = (int)in[0];
        size_t n = (size_t)in[1];
        for (size_t i = 0; i < n; ++i) {
            T x = (T)in[2 + i];
            out.push_back(!std::strcmp(mode, "act") ? (double)gn_act<T>(x, code) : (double)gn_act_grad<T>(x, code));
        }
    } else if (!std::strcmp(mode, "adam")) {
        size_t n = (size_t)in[0];
        T lr = (T)in[1], b1 = (T)in[2], b2 = (T)in[3], eps = (T)in[4], wd = (T)in[5];
        double t = in[6];
        int ams = (int)in[7], dec = (int)in[8];
        T step_size = (T)(in[1] / (1.0 - std::pow(in[2], t)));
        T bc2_sqrt = (T)std::sqrt(1.0 - std::pow(in[3], t));
        const double* base = in.data() + 9;
        std::vector<T> p(n), m(n), v(n), vmax(n);
        for (size_t i = 0; i < n; ++i) {
            p[i] = (T)base[i]; m[i] = (T)base[2 * n + i]; v[i] = (T)base[3 * n + i]; vmax[i] = (T)base[4 * n + i];
            gn_adam_update<T>(p[i], (T)base[n + i], m[i], v[i], vmax[i], lr, b1, b2, eps, wd, step_size, bc2_sqrt, ams, dec);
        }
        for (auto* arr : {&p, &m, &v, &vmax})
            for (T x : *arr) out.push_back((double)x);
    } else if (!std::strcmp(mode, "sgd")) {
        size_t n = (size_t)in[0];
        const double* base = in.data() + 7;
        std::vector<T> p(n), buf(n);
        for (size_t i = 0; i < n; ++i) {
            p[i] = (T)base[i]; buf[i] = (T)base[2 * n + i];
            gn_sgd_update<T>(p[i], (T)base[n + i], buf[i], (T)in[1], (T)in[2], (T)in[3], (T)in[4], (int)in[5], (int)in[6]);
        }
        for (T x : p) out.push_back((double)x);
        for (T x : buf) out.push_back((double)x);
    } else if (!std::strcmp(mode, "softmax_xent")) {
        int rows = (int)in[0], k = (int)in[1];
        std::vector<T> z(rows * k), y(rows * k), a(rows * k), d(rows * k);
        for (int i = 0; i < rows * k; ++i) { z[i] = (T)in[2 + i]; y[i] = (T)in[2 + rows * k + i]; }
        double total = 0;
        for (int r = 0; r < rows; ++r)
            total += (double)gn_softmax_xent_row<T>(&z[r * k], &y[r * k], &a[r * k], &d[r * k], k, T(1) / T(rows));
        out.push_back(total);
        for (T x : a) out.push_back((double)x);
        for (T x : d) out.push_back((double)x);
    } else if (!std::strcmp(mode, "sigmoid_xent")) {
        size_t n = (size_t)in[0];
        std::vector<T> a(n), d(n);
        double total = 0;
        for (size_t i = 0; i < n; ++i)
            total += (double)gn_sigmoid_xent<T>((T)in[1 + i], (T)in[1 + n + i], a[i], d[i], T(1) / T(n));
        out.push_back(total);
        for (T x : a) out.push_back((double)x);
        for (T x : d) out.push_back((double)x);
    } else if (!std::strcmp(mode, "row_hit")) {  // IN = [rows, k, a.., y..]  OUT = [hit per row]
        int rows = (int)in[0], k = (int)in[1];
        std::vector<T> a(rows * k), y(rows * k);
        for (int i = 0; i < rows * k; ++i) { a[i] = (T)in[2 + i]; y[i] = (T)in[2 + rows * k + i]; }
        for (int r = 0; r < rows; ++r) out.push_back((double)gn_row_hit<T>(&a[r * k], &y[r * k], k));
    } else if (!std::strcmp(mode, "uniform")) {  // IN = [seed_hi32, seed_lo32, n]  OUT = [u(seed, 0..n-1)]
        unsigned long long seed = ((unsigned long long)in[0] << 32) | (unsigned long long)in[1];
        for (size_t i = 0; i < (size_t)in[2]; ++i) out.push_back(gn_uniform(seed, i));
    } else {
        std::fprintf(stderr, "unknown mode %s\n", mode);
        std::exit(2);
    }
    return out;
}

int main(int argc, char** argv) {
    if (argc != 5) { std::fprintf(stderr, "usage: %s MODE f32|f64 IN OUT\n", argv[0]); return 2; }
    std::vector<double> in = read_all(argv[3]);
    std::vector<double> out = !std::strcmp(argv[2], "f32") ? run<float>(argv[1], in) : run<double>(argv[1], in);
    FILE* f = std::fopen(argv[4], "wb");
    if (!f) { std::perror(argv[4]); return 2; }
    std::fwrite(out.data(), sizeof(double), out.size(), f);
    std::fclose(f);
    return 0;
}
#endif  // GPUNET_HOST_HARNESS
#endif  // GPUNET_KERNELS_CU
