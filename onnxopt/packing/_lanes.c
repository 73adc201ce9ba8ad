/*
 * Compiled inner loops of the lockstep lane decoders (see lanes.py, rans.py, huffman.py).
 *
 * These are the same loops as the numpy reference decoders in rans.py and huffman.py, one symbol of
 * one lane at a time instead of one numpy call per step: the numpy versions pay a fixed cost per call
 * and per temporary, which dominates on the many short steps of small and int8 models. The word read
 * order is identical (step by step, lanes in global order), so both decode the same files; the tests
 * run both on the same streams and compare.
 *
 * The loops are called through ctypes (native.py). The module's one Python-level function,
 * unpack_spliced, is the one-call unpacker of _unpack.c, which runs the same loops. Every output index
 * is checked against the buffer size, and a word section that runs out stops the loop, so a corrupt
 * file cannot make these read or write out of bounds.
 */
#include "_lanes.h"

#define HUFF_MAX_LEN 12
#define HUFF_MASK ((1u << HUFF_MAX_LEN) - 1u)
#define HUFF_WORD_BITS 32
#define PARAM_MARK 0
#define PARAM_MAX_SLOPE (1 << 16)

/*
 * The batch, as both loops take it: nstreams streams sorted by steps (most first, lane_order in
 * lanes.py), stream k having lanes[k] lanes of steps[k] steps whose symbol 0 goes to dest[k] and whose
 * symbols are stride[k] apart; stream k's decode table is entries k*4096 .. k*4096+4095 of tab, and its
 * lanes are lanes start[k] .. start[k+1]-1 of the state arrays. The five arrays are the rows of one
 * int64 layout of 5 x (nstreams + 1) (LaneBatch.layout; start is scratch, filled here).
 * Symbol i of a stream is step i / lanes of lane i % lanes, so at step t lane j of stream k writes
 * dest[k] + (t * lanes[k] + j) * stride[k]. At each step the lanes run in global order, stream by stream;
 * the streams still working at step t (more than t steps) are a prefix.
 */
#define LAYOUT(layout, nstreams)                                                                      \
    const int64_t *lanes = (layout), *steps = (layout) + (nstreams) + 1, *dest = (layout) + 2 * ((nstreams) + 1); \
    const int64_t *stride = (layout) + 3 * ((nstreams) + 1);                                                  \
    int64_t *start = (layout) + 4 * ((nstreams) + 1)

static void lane_starts(int64_t nstreams, const int64_t *lanes, int64_t *start) {
    start[0] = 0;
    for (int64_t k = 0; k < nstreams; k++) start[k + 1] = start[k] + lanes[k];
}

/* Streams still working at step t, given the count at an earlier step (it only shrinks). */
static int64_t live_at(int64_t t, int64_t live, const int64_t *steps) {
    while (live > 0 && steps[live - 1] <= t) live--;
    return live;
}

/* Where stream k's lanes write at step t (lane j at o[j * stride[k]]), or NULL when any of those bytes
   would fall outside out (a corrupt file). */
static uint8_t *step_output(int64_t k, int64_t t, const int64_t *lanes, const int64_t *dest, const int64_t *stride,
                            uint8_t *out, int64_t out_len) {
    const int64_t n = lanes[k], step = stride[k], first = dest[k] + t * n * step;
    if (first < 0 || (uint64_t)(first + (n - 1) * step) >= (uint64_t)out_len) return NULL;
    return out + first;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#include <string.h>
#define HAVE_AVX2_PATH 1

/* perm[m]: for a refill mask m of 8 lanes, where each refilling lane finds its word among the words
   loaded for the group (the lanes that refill take consecutive words, in lane order) */
static int32_t perm[256][8];
static volatile int perm_ready = 0;

static void make_perm(void) {
    for (int m = 0; m < 256; m++) {
        int k = 0;
        for (int i = 0; i < 8; i++) perm[m][i] = (m >> i & 1) ? k++ : 0;
    }
    perm_ready = 1;
}

/* Eight lanes' next states from their table entries e, refilled where they fell below RANS_LOW and
   are live: the refilling lanes take the next words in lane order (one load, spread by perm). */
__attribute__((target("avx2"))) static inline __m256i advance8(__m256i x, __m256i e, __m256i live, int refill,
                                                               const uint16_t *words, int64_t *read) {
    const __m256i mask = _mm256_set1_epi32(RANS_MASK);
    const __m256i f = _mm256_and_si256(_mm256_srli_epi32(e, 8), mask);
    x = _mm256_add_epi32(_mm256_mullo_epi32(_mm256_srli_epi32(x, RANS_PRECISION), f), _mm256_srli_epi32(e, 20));
    if (!refill) return x;
    const __m256i low1 = _mm256_set1_epi32(RANS_LOW - 1);
    const __m256i need = _mm256_and_si256(_mm256_cmpeq_epi32(_mm256_min_epu32(x, low1), x), live); /* x < LOW */
    const int m = _mm256_movemask_ps(_mm256_castsi256_ps(need));
    if (!m) return x;
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(words + *read)));
    const __m256i spread = _mm256_permutevar8x32_epi32(w, _mm256_loadu_si256((const __m256i *)perm[m]));
    *read += __builtin_popcount((unsigned)m);
    return _mm256_blendv_epi8(x, _mm256_or_si256(_mm256_slli_epi32(x, 16), spread), need);
}

/*
 * The lanes of one stream's step, eight at a time (the last 1-7 masked): the same arithmetic as the
 * scalar loop, with the eight table lookups as one gather and the refills as one load of the next words
 * (see advance8). Stops before a group that could read past the word section (each group may load
 * eight words), which the scalar loop then finishes with its own end check. Returns the lanes done;
 * *read advances by the words taken.
 */
__attribute__((target("avx2"))) static int64_t rans_lanes_avx2(uint32_t *xs, const uint32_t *tb, uint8_t *o,
                                                                int64_t step, int64_t n, int refill,
                                                                const uint16_t *words, int64_t nwords,
                                                                int64_t *read) {
    const __m256i mask = _mm256_set1_epi32(RANS_MASK), all = _mm256_set1_epi32(-1);
    const __m256i low_bytes = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                               0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    uint32_t sym[8];
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        if (refill && *read + 8 > nwords) return j;
        const __m256i x = _mm256_loadu_si256((const __m256i *)(xs + j));
        const __m256i e = _mm256_i32gather_epi32((const int *)tb, _mm256_and_si256(x, mask), 4);
        if (step == 1) { /* the eight symbols are the entries' low bytes */
            const __m256i b = _mm256_shuffle_epi8(e, low_bytes);
            const uint32_t lo = (uint32_t)_mm_cvtsi128_si32(_mm256_castsi256_si128(b));
            const uint32_t hi = (uint32_t)_mm_cvtsi128_si32(_mm256_extracti128_si256(b, 1));
            memcpy(o + j, &lo, 4);
            memcpy(o + j + 4, &hi, 4);
        } else {
            _mm256_storeu_si256((__m256i *)sym, e);
            for (int i = 0; i < 8; i++) o[(j + i) * step] = (uint8_t)sym[i];
        }
        _mm256_storeu_si256((__m256i *)(xs + j), advance8(x, e, all, refill, words, read));
    }
    const int64_t rest = n - j;
    if (rest == 0 || (refill && *read + 8 > nwords)) return j;
    const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)rest), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256i x = _mm256_maskload_epi32((const int *)(xs + j), live);
    const __m256i e =
        _mm256_mask_i32gather_epi32(_mm256_setzero_si256(), (const int *)tb, _mm256_and_si256(x, mask), live, 4);
    _mm256_storeu_si256((__m256i *)sym, e);
    for (int64_t i = 0; i < rest; i++) o[(j + i) * step] = (uint8_t)sym[i];
    _mm256_maskstore_epi32((int *)(xs + j), live, advance8(x, e, live, refill, words, read));
    return n;
}

/* 1 when the AVX2 lanes are used: the CPU has AVX2 and rans_simd has not turned them off. */
static int simd = -1;

static int use_simd(void) {
    if (simd < 0) simd = __builtin_cpu_supports("avx2") ? 1 : 0;
    if (simd && !perm_ready) make_perm();
    return simd;
}
#endif

/* Turn the vector lanes off (on = 0) or on where the CPU has them (1), or change nothing (-1). Returns
   1 if they are on, or'ed with 2 if the CPU has them. (For tests and measurements: both paths decode
   the same words into the same bytes.) */
int64_t rans_simd(int64_t on) {
#ifdef HAVE_AVX2_PATH
    const int supported = __builtin_cpu_supports("avx2") ? 1 : 0;
    if (on >= 0) simd = on ? supported : 0;
    return use_simd() | supported << 1;
#else
    (void)on;
    return 0;
#endif
}

/* Returns the number of words read, -1 if the word section ran out, -2 if an output index is outside out,
   -3 if a lane did not end in a start state (corrupt words or headers). */
int64_t rans_decode(int64_t nstreams, int64_t *layout, uint32_t *x, const uint32_t *tab, const uint16_t *words,
                    int64_t nwords, uint8_t *out, int64_t out_len) {
    LAYOUT(layout, nstreams);
    lane_starts(nstreams, lanes, start);
    const int64_t max_steps = nstreams ? steps[0] : 0;
    int64_t read = 0, live = nstreams, live_next = nstreams;
#ifdef HAVE_AVX2_PATH
    const int vector = use_simd();
#endif
    for (int64_t t = 0; t < max_steps; t++) {
        live = live_at(t, live, steps);
        live_next = live_at(t + 1, live_next, steps); /* streams whose lanes read words after this step */
        for (int64_t k = 0; k < live; k++) {
            uint32_t *xs = x + start[k];
            const uint32_t *tb = tab + k * TABLE_SIZE;
            const int64_t n = lanes[k], step = stride[k];
            const int refill = k < live_next;
            uint8_t *o = step_output(k, t, lanes, dest, stride, out, out_len);
            if (o == NULL) return -2;
            int64_t j = 0;
#ifdef HAVE_AVX2_PATH
            if (vector) j = rans_lanes_avx2(xs, tb, o, step, n, refill, words, nwords, &read);
#endif
            for (; j < n; j++) {
                uint32_t s = xs[j];
                const uint32_t e = tb[s & RANS_MASK];
                o[j * step] = (uint8_t)e;
                s = (s >> RANS_PRECISION) * ((e >> 8) & RANS_MASK) + (e >> 20);
                if (refill && s < RANS_LOW) {
                    if (read >= nwords) return -1;
                    s = (s << 16) | words[read++];
                }
                xs[j] = s;
            }
        }
    }
    for (int64_t j = 0; j < start[nstreams]; j++) /* every lane back at a start state (2**16 + 16 carried bits) */
        if (x[j] >> 16 != 1) return -3;
    return read;
}

/*
 * A parametric table (rans.py: ParamTable, param_freqs): the mark byte, lo, hi, mu, the u16 ratio and the
 * zigzag varint slope, into 12-bit frequencies by byte value (zero outside lo..hi). Integer arithmetic
 * only, step for step as in Python, so both build the same table. Returns the bytes read or -1.
 */
static int64_t param_table(const uint8_t *buf, int64_t len, uint32_t *by_byte) {
    if (len < 7) return -1;
    const int64_t lo = buf[1], hi = buf[2], mu = buf[3], ratio = buf[4] | (int64_t)buf[5] << 8;
    int64_t pos = 6, zz = 0;
    int big = 0;
    for (int shift = 0;; shift += 7) { /* (up to 10 bytes, as Reader.uvarint) */
        if (pos >= len || shift > 63) return -1;
        const uint8_t byte = buf[pos++];
        if (shift < 21) zz |= (int64_t)(byte & 0x7F) << shift;
        else if (byte & 0x7F) big = 1;
        if (!(byte & 0x80)) break;
    }
    if (big || zz > 2 * PARAM_MAX_SLOPE) return -1; /* |slope| > PARAM_MAX_SLOPE */
    const int64_t slope = (zz & 1) ? -((zz + 1) >> 1) : zz >> 1;
    if (!(lo <= mu && mu <= hi) || lo == hi) return -1;
    const int64_t side = (mu - lo > hi - mu) ? mu - lo : hi - mu, n = hi - lo + 1;
    uint64_t w[256];
    w[0] = 1ull << 24;
    for (int64_t d = 0; d < side; d++) {
        int64_t r = ratio - slope * d;
        r = r < 0 ? 0 : (r > 65535 ? 65535 : r);
        w[d + 1] = (w[d] * (uint64_t)r) >> 16;
    }
    uint64_t total = 0;
    for (int64_t v = lo; v <= hi; v++) total += w[v > mu ? v - mu : mu - v];
    uint64_t sum = 0;
    for (int i = 0; i < 256; i++) by_byte[i] = 0;
    for (int64_t v = lo; v <= hi; v++) {
        const uint32_t f = 1 + (uint32_t)(w[v > mu ? v - mu : mu - v] * (uint64_t)(TABLE_SIZE - n) / total);
        by_byte[v ^ 0x80] = f;
        sum += f;
    }
    by_byte[mu ^ 0x80] += (uint32_t)(TABLE_SIZE - sum);
    return pos;
}

/*
 * One rANS stream header after its lane count (rans.py: parse, read_symbol_set, read_nibble_varints,
 * read_states, _decode_table in one pass): the symbol set, the table precision, the nibble-varint
 * frequencies (or a parametric table) and the lane states, into the 4096-entry decode table and the
 * lanes' start states (table and states NULL: the header is only checked and measured). Returns the
 * bytes read, or -1 for any inconsistency; the caller then runs the Python reader, which names the fault. (The Python path is the reference: a property test parses
 * random and damaged headers both ways.)
 */
int64_t rans_header(const uint8_t *buf, int64_t len, int64_t lanes, uint32_t *table, uint32_t *states) {
    int64_t pos = 0;
    uint8_t present[256];
    uint32_t freqs[256];
    int64_t count = 0;
    if (pos >= len) return -1;
    if (buf[0] == PARAM_MARK) {
        uint32_t by_byte[256];
        pos = param_table(buf, len, by_byte);
        if (pos < 0) return -1;
        for (int i = 0; i < 256; i++)
            if (by_byte[i]) {
                present[count] = (uint8_t)i;
                freqs[count++] = by_byte[i];
            }
    } else {
        count = (int64_t)buf[pos++] + 1;
        if (count <= 32) {
            if (pos + count > len) return -1;
            for (int64_t i = 0; i < count; i++) {
                present[i] = buf[pos + i];
                if (i && present[i] <= present[i - 1]) return -1;
            }
            pos += count;
        } else {
            int64_t found = 0;
            if (pos + 32 > len) return -1;
            for (int i = 0; i < 256; i++)
                if (buf[pos + (i >> 3)] >> (i & 7) & 1) present[found++] = (uint8_t)i;
            if (found != count) return -1;
            pos += 32;
        }
        if (count < 2 || pos >= len) return -1;
        const int precision = buf[pos++];
        if (precision < 1 || precision > RANS_PRECISION) return -1;
        const uint64_t scale = 1ull << precision;
        uint64_t sum = 0, value = 0;
        int shift = 0, half = 0;
        int64_t got = 0;
        uint8_t byte = 0;
        while (got < count - 1) {
            if (!half) {
                if (pos >= len) return -1;
                byte = buf[pos++];
            }
            const uint8_t nib = half ? byte >> 4 : byte & 15;
            half = !half;
            value |= (uint64_t)(nib & 7) << shift;
            if (nib & 8) {
                shift += 3;
                if (shift > 60) return -1;
                continue;
            }
            if (value > scale) return -1;
            freqs[got++] = (uint32_t)value + 1;
            sum += value + 1;
            value = 0;
            shift = 0;
        }
        if (sum >= scale) return -1;
        freqs[count - 1] = (uint32_t)(scale - sum);
        for (int64_t i = 0; i < count; i++) freqs[i] <<= RANS_PRECISION - precision;
    }
    uint32_t cum = 0;
    for (int64_t i = 0; i < count && table != NULL; i++) {
        const uint32_t f = freqs[i];
        for (uint32_t k = 0; k < f; k++) table[cum + k] = present[i] | f << 8 | k << 20;
        cum += f;
    }
    const int64_t bitmap = (lanes + 7) / 8;
    if (pos + bitmap > len) return -1;
    const uint8_t *shorts = buf + pos;
    pos += bitmap;
    for (int64_t j = lanes; j < bitmap * 8; j++)
        if (shorts[j >> 3] >> (j & 7) & 1) return -1;
    for (int64_t j = 0; j < lanes; j++) {
        const int is_short = shorts[j >> 3] >> (j & 7) & 1;
        const int n = is_short ? 3 : 4;
        if (pos + n > len) return -1;
        uint32_t x = 0;
        for (int b = 0; b < n; b++) x |= (uint32_t)buf[pos + b] << (8 * b);
        pos += n;
        if (x < RANS_LOW || (x < (1u << 24)) != is_short) return -1;
        if (states != NULL) states[j] = x;
    }
    return pos;
}

/* Same contract as rans_decode; buf holds each lane's unread bits (bits[j] of them, low-aligned). */
int64_t huffman_decode(int64_t nstreams, int64_t *layout, uint64_t *buf, int64_t *bits, const uint16_t *tab,
                       const uint32_t *words, int64_t nwords, uint8_t *out, int64_t out_len) {
    LAYOUT(layout, nstreams);
    lane_starts(nstreams, lanes, start);
    const int64_t max_steps = nstreams ? steps[0] : 0;
    int64_t read = 0, live = nstreams, live_next = nstreams;
    for (int64_t t = 0; t < max_steps; t++) {
        live = live_at(t, live, steps);
        live_next = live_at(t + 1, live_next, steps);
        for (int64_t k = 0; k < live; k++) {
            uint64_t *bs = buf + start[k];
            int64_t *ns = bits + start[k];
            const uint16_t *tb = tab + k * TABLE_SIZE;
            const int64_t n = lanes[k], step = stride[k];
            const int refill = k < live_next;
            uint8_t *o = step_output(k, t, lanes, dest, stride, out, out_len);
            if (o == NULL) return -2;
            for (int64_t j = 0; j < n; j++) {
                uint64_t b = bs[j];
                int64_t m = ns[j];
                const uint16_t e = tb[(b >> (m - HUFF_MAX_LEN)) & HUFF_MASK];
                o[j * step] = (uint8_t)e;
                m -= e >> 8;
                if (refill && m < HUFF_MAX_LEN) {
                    if (read >= nwords) return -1;
                    b = (b << HUFF_WORD_BITS) | words[read++];
                    m += HUFF_WORD_BITS;
                    bs[j] = b;
                }
                ns[j] = m;
            }
        }
    }
    return read;
}

static PyMethodDef lanes_methods[] = {
    {"unpack_spliced", (PyCFunction)(void (*)(void))unpack_spliced, METH_FASTCALL,
     "The model bytes of a packed file whose records the one-call path reads, or an int (see _unpack.c)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef lanes_module = {PyModuleDef_HEAD_INIT, "_lanes",
                                          "compiled lane decoder loops (ctypes) and the one-call unpacker", -1,
                                          lanes_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__lanes(void) { return PyModule_Create(&lanes_module); }
