/* Shared between the lane loops (_lanes.c) and the one-call unpacker (_unpack.c). */
#ifndef ONNXOPT_LANES_H
#define ONNXOPT_LANES_H

#include <Python.h>
#include <stdint.h>

#define RANS_PRECISION 12
#define RANS_MASK ((1u << RANS_PRECISION) - 1u)
#define RANS_LOW (1u << 16)
#define TABLE_SIZE 4096

int64_t rans_decode(int64_t nstreams, int64_t *layout, uint32_t *x, const uint32_t *tab, const uint16_t *words,
                    int64_t nwords, uint8_t *out, int64_t out_len);
int64_t rans_header(const uint8_t *buf, int64_t len, int64_t lanes, uint32_t *table, uint32_t *states);

/* _unpack.c: the spliced model bytes of a packed file in one call (see there), for the module table */
PyObject *unpack_spliced(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

#endif
