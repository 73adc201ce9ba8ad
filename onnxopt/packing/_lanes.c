/*
 * Compiled inner loops of the lockstep lane decoders (see lanes.py, rans.py, huffman.py).
 *
 * These are the same loops as the numpy reference decoders in rans.py and huffman.py, one symbol of
 * one lane at a time instead of one numpy call per step: the numpy versions pay a fixed cost per call
 * and per temporary, which dominates on the many short steps of small and int8 models. The word read
 * order is identical (step by step, lanes in global order), so both decode the same files; the tests
 * run both on the same streams and compare.
 *
 * Called through ctypes (native.py); the module init below exists only so that the import system can
 * find the shared object. Every output index is checked against the buffer size, and a word section
 * that runs out stops the loop, so a corrupt file cannot make these read or write out of bounds.
 */
#include <Python.h>
#include <stdint.h>

#define RANS_PRECISION 12
#define RANS_MASK ((1u << RANS_PRECISION) - 1u)
#define RANS_LOW (1u << 16)
#define HUFF_MAX_LEN 12
#define HUFF_MASK ((1u << HUFF_MAX_LEN) - 1u)
#define HUFF_WORD_BITS 32

/* Returns the number of words read, -1 if the word section ran out, -2 if an output index is outside out. */
int64_t rans_decode(uint32_t *x, const uint32_t *tab, const int64_t *tbase, int64_t *pos, const int64_t *step_stride,
                    const int64_t *alive, int64_t max_steps, const uint16_t *words, int64_t nwords, uint8_t *out,
                    int64_t out_len) {
    int64_t read = 0;
    for (int64_t t = 0; t < max_steps; t++) {
        const int64_t a = alive[t];
        const int64_t refill = (t + 1 < max_steps) ? alive[t + 1] : 0;
        for (int64_t j = 0; j < a; j++) {
            uint32_t s = x[j];
            const uint32_t e = tab[tbase[j] + (s & RANS_MASK)];
            const int64_t p = pos[j];
            if ((uint64_t)p >= (uint64_t)out_len) return -2;
            out[p] = (uint8_t)e;
            pos[j] = p + step_stride[j];
            s = (s >> RANS_PRECISION) * ((e >> 8) & RANS_MASK) + (e >> 20);
            if (j < refill && s < RANS_LOW) {
                if (read >= nwords) return -1;
                s = (s << 16) | words[read++];
            }
            x[j] = s;
        }
    }
    return read;
}

/* Same contract as rans_decode; buf holds each lane's unread bits (bits[j] of them, low-aligned). */
int64_t huffman_decode(uint64_t *buf, int64_t *bits, const uint16_t *tab, const int64_t *tbase, int64_t *pos,
                       const int64_t *step_stride, const int64_t *alive, int64_t max_steps, const uint32_t *words,
                       int64_t nwords, uint8_t *out, int64_t out_len) {
    int64_t read = 0;
    for (int64_t t = 0; t < max_steps; t++) {
        const int64_t a = alive[t];
        const int64_t refill = (t + 1 < max_steps) ? alive[t + 1] : 0;
        for (int64_t j = 0; j < a; j++) {
            uint64_t b = buf[j];
            int64_t n = bits[j];
            const uint16_t e = tab[tbase[j] + ((b >> (n - HUFF_MAX_LEN)) & HUFF_MASK)];
            const int64_t p = pos[j];
            if ((uint64_t)p >= (uint64_t)out_len) return -2;
            out[p] = (uint8_t)e;
            pos[j] = p + step_stride[j];
            n -= e >> 8;
            if (j < refill && n < HUFF_MAX_LEN) {
                if (read >= nwords) return -1;
                b = (b << HUFF_WORD_BITS) | words[read++];
                n += HUFF_WORD_BITS;
                buf[j] = b;
            }
            bits[j] = n;
        }
    }
    return read;
}

static struct PyModuleDef lanes_module = {PyModuleDef_HEAD_INIT, "_lanes", "compiled lane decoder loops (ctypes)", -1,
                                          NULL};

PyMODINIT_FUNC PyInit__lanes(void) { return PyModule_Create(&lanes_module); }
