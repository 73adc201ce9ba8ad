/*
 * The spliced model bytes of a packed file in one call, for the files whose records use only the
 * plain codecs: RAW, PLANES of RAW / CONST / rANS planes, BUNDLE (of RAW or PLANES), SLICE and REF, all
 * filling byte fields (raw_data, float_data, double_data) in the skeleton's holes. Small int8 models
 * whose tensors are bundled and rANS-coded are such files (MTCNN-p int8: 12 records, 6.7 KB of weights),
 * and their unpacking was mostly Python bookkeeping per record, three times the time zlib takes to
 * inflate the same weights (pack.py: _index_records, _unpack; codecs.py: parse_payload, _parse_planes;
 * rans.py: parse, decode_batch; codecs.py: fill_planes, place_carries, assemble). Files with other
 * codecs (brotli, LZMA, zlib, split planes, row groups, chunks, Huffman) are declined after the index,
 * or at the first such payload, and read by the Python reader as before.
 *
 * The Python reader stays the reference and the only one that names faults: this one follows it check
 * for check, and wherever it meets something it does not handle (another codec, an integer or
 * out-of-skeleton record, a varint longer than 9 bytes) or something the Python reader would refuse,
 * it declines, returning an int, and pack.py runs the Python reader, which then unpacks the file or
 * says exactly what is wrong. So the fast path can only ever give the bytes the Python reader gives;
 * the tests check that on every packed fixture and on thousands of damaged files.
 *
 * Every read is bounds-checked, every size is checked against the same limits before allocating.
 */
#include "_lanes.h"

#include <stdlib.h>
#include <string.h>

enum { DONE = 0, UNSUPPORTED = 1, REFUSED = 2, NO_MEMORY = 3 };
enum { KIND_RAW_DATA = 1, KIND_FLOAT = 2, KIND_INT32 = 3, KIND_INT64 = 4, KIND_DOUBLE = 5, KIND_UINT64 = 6 };
enum { C_RAW = 0, C_PLANES = 3, C_REF = 4, C_BUNDLE = 5, C_SLICE = 6, C_CHUNKS = 9 };
enum { PLANE_RAW = 0, PLANE_CONST = 1, PLANE_RANS = 2, PLANE_HUFFMAN = 3 };
#define EXPLICIT_LEN 0x80
#define TAIL_MIN_STEPS 3

/* payload.py FIELD_TAG, by kind: the wire tag of the field a record fills */
static const uint8_t FIELD_TAG[7] = {0, 9 << 3 | 2, 4 << 3 | 2, 5 << 3 | 2, 7 << 3 | 2, 10 << 3 | 2, 11 << 3 | 2};

typedef struct {
    int64_t max_tensor, max_total, max_skeleton, max_lanes, max_steps;
} limits_t;

typedef struct {
    int kind, codec;
    int64_t raw_len, hole, hole_len, ref, bundle_len;
    int64_t meta_at, meta_len, packed_len;
    uint32_t crc;
    int64_t size;       /* payload records: the bytes they decode to (a BUNDLE: the whole bundle's) */
    int64_t base;       /* payload records decoded in out: where (-1: bytes read in place) */
    const uint8_t *src; /* the record's own raw_len bytes, once decoded */
} record_t;

/* one rANS plane (rans.py LaneStream): dest is absolute in out */
typedef struct {
    int64_t lanes, steps, nwords, dest, stride, carry_at, base, n, pool_first, lane0;
    int tail;
    const uint8_t *header; /* its header after the lane count, header_len bytes (checked; read again to decode) */
    int64_t header_len;
} stream_t;

/* one RAW plane (from the k-th n-byte run of the payload's bulk) or CONST plane (value) of a payload */
typedef struct {
    int64_t base, itemsize, n, plane, pool_k, bulk_len;
    int value; /* -1: a RAW plane */
    const uint8_t *bulk;
} plane_fill_t;

typedef struct {
    const uint8_t *buf;
    int64_t pos, end;
} cursor_t;

/* Reader.uvarint / wire.read_varint for values below 2**63 (9 bytes; the rare longer forms: declined) */
static int uvarint(cursor_t *c, uint64_t *value) {
    uint64_t v = 0;
    for (int shift = 0; shift < 63; shift += 7) {
        if (c->pos >= c->end) return -1;
        const uint8_t b = c->buf[c->pos++];
        v |= (uint64_t)(b & 0x7F) << shift;
        if (b < 0x80) {
            *value = v;
            return 0;
        }
    }
    return -1;
}

/* ---------------------------------------------------------------- CRC-32 (zlib's), eight bytes a step */

static uint32_t crc_table[8][256];
static int crc_ready = 0;

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[0][i] = c;
    }
    for (int t = 1; t < 8; t++)
        for (int i = 0; i < 256; i++) crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xFF];
    crc_ready = 1;
}

static uint32_t crc32_of(const uint8_t *p, int64_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (; n >= 8; n -= 8, p += 8) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + 4, 4);
        lo ^= c;
        c = crc_table[7][lo & 0xFF] ^ crc_table[6][(lo >> 8) & 0xFF] ^ crc_table[5][(lo >> 16) & 0xFF] ^
            crc_table[4][lo >> 24] ^ crc_table[3][hi & 0xFF] ^ crc_table[2][(hi >> 8) & 0xFF] ^
            crc_table[1][(hi >> 16) & 0xFF] ^ crc_table[0][hi >> 24];
    }
    while (n-- > 0) c = crc_table[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* ---------------------------------------------------------------- the index (pack.py: _index_records) */

typedef struct {
    const uint8_t *skeleton;
    int64_t skeleton_len;
    limits_t lim;
    record_t *records;
    int64_t count;
    int64_t *heads;   /* BUNDLE records, by bundle number */
    int64_t *cursors; /* where each bundle's next slice starts */
    int64_t nheads;
} unpack_t;

/* The field content length at the tag at `at` and where the content starts (_field_content). */
static int field_content(const unpack_t *u, int64_t at, int64_t *size, int64_t *start) {
    cursor_t c = {u->skeleton, at + 1, u->skeleton_len};
    uint64_t v;
    if (uvarint(&c, &v) || v > (uint64_t)u->lim.max_tensor) return -1;
    *size = (int64_t)v;
    *start = c.pos;
    return 0;
}

static int read_index(unpack_t *u, const uint8_t *index, int64_t index_len) {
    cursor_t c = {index, 0, index_len};
    int64_t cursor = 0;
    for (int64_t k = 0; k < u->count; k++) {
        record_t *rec = &u->records[k];
        memset(rec, 0, sizeof *rec);
        rec->ref = rec->bundle_len = rec->base = -1;
        if (c.pos >= c.end) return REFUSED;
        const uint8_t tag = index[c.pos++];
        const int kind = tag & 7, codec = tag >> 3 & 15;
        if (kind == 0 || kind == 7) return REFUSED;
        if (kind == KIND_INT32 || kind == KIND_INT64 || kind == KIND_UINT64) return UNSUPPORTED;
        if (codec != C_RAW && codec != C_PLANES && codec != C_REF && codec != C_BUNDLE && codec != C_SLICE)
            return UNSUPPORTED;
        uint64_t place, v;
        if (uvarint(&c, &place)) return REFUSED;
        int64_t raw_len = -1;
        if (tag & EXPLICIT_LEN) {
            if (uvarint(&c, &v) || v > (uint64_t)u->lim.max_tensor) return REFUSED;
            raw_len = (int64_t)v;
        }
        if (place & 1) return UNSUPPORTED; /* a field record: restored on the parsed tensor */
        /* the hole: past `skip` bytes equal to the field's tag from the cursor on, the next one (as
           _index_records finds it; its count of each tag byte only bounds the work, and here the records'
           searches cover disjoint stretches of the skeleton, each ending at its hole) */
        const uint8_t tag_byte = FIELD_TAG[kind];
        const uint64_t skip = place >> 1;
        const uint8_t *hit = NULL;
        int64_t from = cursor;
        for (uint64_t s = 0; s <= skip; s++) {
            hit = from < u->skeleton_len ? memchr(u->skeleton + from, tag_byte, (size_t)(u->skeleton_len - from)) : NULL;
            if (hit == NULL) return REFUSED;
            from = hit - u->skeleton + 1;
        }
        int64_t hole_len, start;
        if (field_content(u, hit - u->skeleton, &hole_len, &start)) return REFUSED;
        rec->hole = cursor = start;
        rec->hole_len = hole_len;
        if (raw_len >= 0 && raw_len != hole_len) return REFUSED; /* (byte kinds: the field is the payload) */
        rec->raw_len = raw_len = hole_len;
        rec->kind = kind;
        rec->codec = codec;
        if (codec == C_REF || codec == C_SLICE) {
            if (uvarint(&c, &v) || v >= (uint64_t)u->count) return REFUSED;
            rec->ref = (int64_t)v;
            if (codec == C_SLICE) { /* _add_slice */
                if (rec->ref >= u->nheads) return REFUSED;
                record_t *head = &u->records[u->heads[rec->ref]];
                head->bundle_len += raw_len;
                if (head->bundle_len > u->lim.max_tensor) return REFUSED;
            }
            continue;
        }
        if (uvarint(&c, &v) || v > (uint64_t)(c.end - c.pos)) return REFUSED;
        rec->meta_at = c.pos;
        rec->meta_len = (int64_t)v;
        c.pos += (int64_t)v;
        if (codec == C_RAW) {
            rec->packed_len = raw_len;
        } else {
            if (uvarint(&c, &v) || v > (uint64_t)1 << 62) return REFUSED;
            rec->packed_len = (int64_t)v;
        }
        if (c.end - c.pos < 4) return REFUSED;
        rec->crc = (uint32_t)index[c.pos] | (uint32_t)index[c.pos + 1] << 8 | (uint32_t)index[c.pos + 2] << 16 |
                   (uint32_t)index[c.pos + 3] << 24;
        c.pos += 4;
        if (codec == C_BUNDLE) {
            rec->bundle_len = raw_len;
            u->heads[u->nheads++] = k;
            /* (a bundle of another codec, most often brotli: declined now, not after the whole index) */
            if (rec->meta_len && index[rec->meta_at] != C_RAW && index[rec->meta_at] != C_PLANES) return UNSUPPORTED;
        }
    }
    return c.pos == c.end ? DONE : REFUSED;
}


/* ---------------------------------------------------------------- payloads (codecs.py: parse_payload) */

typedef struct {
    stream_t *streams;
    int64_t nstreams, streams_cap;
    plane_fill_t *fills;
    int64_t nfills, fills_cap;
    uint8_t *pool_planes; /* the RAW planes' numbers, each PLANES payload's run in order */
    int64_t npool, pool_cap;
    int64_t words; /* rANS words over all streams */
} planes_t;

static int grow(void **p, int64_t *cap, int64_t need, size_t item) {
    if (need <= *cap) return 0;
    int64_t n = *cap ? *cap : 16;
    while (n < need) n *= 2;
    void *q = realloc(*p, (size_t)n * item);
    if (q == NULL) return -1;
    *p = q;
    *cap = n;
    return 0;
}

/* One PLANES payload of `size` bytes at `base` in out (_parse_planes, rans.parse); *extent: the bytes it
   needs there, its lanes' padding included. */
static int parse_planes(const limits_t *lim, cursor_t *meta, const uint8_t *bulk, int64_t bulk_len, int64_t size,
                        int64_t base, planes_t *s, int64_t *extent) {
    if (meta->pos >= meta->end) return REFUSED;
    const int64_t itemsize = meta->buf[meta->pos++];
    if (itemsize < 1 || size % itemsize || size == 0) return REFUSED;
    const int64_t n = size / itemsize, first_stream = s->nstreams, first_pool = s->npool;
    *extent = size;
    for (int64_t p = 0; p < itemsize; p++) {
        if (meta->pos >= meta->end) return REFUSED;
        const uint8_t codec = meta->buf[meta->pos++];
        if (codec == PLANE_RAW || codec == PLANE_CONST) {
            if (grow((void **)&s->fills, &s->fills_cap, s->nfills + 1, sizeof(plane_fill_t))) return NO_MEMORY;
            plane_fill_t *f = &s->fills[s->nfills++];
            *f = (plane_fill_t){base, itemsize, n, p, s->npool - first_pool, bulk_len, -1, bulk};
            if (codec == PLANE_CONST) {
                if (meta->pos >= meta->end) return REFUSED;
                f->value = meta->buf[meta->pos++];
            } else {
                if (grow((void **)&s->pool_planes, &s->pool_cap, s->npool + 1, 1)) return NO_MEMORY;
                s->pool_planes[s->npool++] = (uint8_t)p;
            }
        } else if (codec == PLANE_RANS) {
            uint64_t lanes, nwords;
            if (uvarint(meta, &lanes)) return REFUSED;
            const uint64_t max_lanes = (uint64_t)(n < lim->max_lanes ? n : lim->max_lanes);
            if (lanes < 1 || lanes > max_lanes || (n + (int64_t)lanes - 1) / (int64_t)lanes > lim->max_steps)
                return REFUSED;
            if (grow((void **)&s->streams, &s->streams_cap, s->nstreams + 1, sizeof(stream_t))) return NO_MEMORY;
            stream_t *st = &s->streams[s->nstreams++];
            memset(st, 0, sizeof *st);
            /* (checked and measured only: the table is built once the file is known to be this path's) */
            st->header = meta->buf + meta->pos;
            st->header_len = rans_header(st->header, meta->end - meta->pos, (int64_t)lanes, NULL, NULL);
            if (st->header_len < 0) return REFUSED;
            meta->pos += st->header_len;
            st->lanes = (int64_t)lanes;
            st->steps = (n + st->lanes - 1) / st->lanes;
            if (uvarint(meta, &nwords) || nwords > (uint64_t)(st->steps * st->lanes)) return REFUSED;
            st->nwords = (int64_t)nwords;
            s->words += st->nwords;
            st->dest = base + p;
            st->stride = itemsize;
            st->carry_at = -1;
            st->base = base;
            st->n = n;
            const int64_t reach = p + (st->lanes * st->steps - 1) * itemsize + 1;
            if (reach > *extent) *extent = reach;
        } else {
            return codec == PLANE_HUFFMAN ? UNSUPPORTED : REFUSED; /* (Huffman: the Python path reads it) */
        }
    }
    if (meta->pos != meta->end) return REFUSED;
    /* the RAW planes' pool: its tail rides in rANS start states, the rest is the bulk; streams with no
       pool bytes left carry their own last two symbols instead */
    int64_t avail = n * (s->npool - first_pool);
    for (int64_t k = first_stream; k < s->nstreams; k++) {
        stream_t *st = &s->streams[k];
        st->pool_first = first_pool;
        if (avail >= 2 * st->lanes) {
            avail -= 2 * st->lanes;
            st->carry_at = avail;
        } else if (st->steps >= TAIL_MIN_STEPS) {
            st->tail = 1;
            st->steps -= 2;
        }
    }
    return bulk_len == avail ? DONE : REFUSED;
}

/* Every payload record's parse, in record order, taking its bulk from data[*pos..end) (_unpack). */
static int parse_payloads(unpack_t *u, const uint8_t *index, const uint8_t *data, int64_t *pos, int64_t end,
                          planes_t *s, int64_t *extent) {
    int64_t bundled = 0;
    *extent = 0;
    for (int64_t k = 0; k < u->count; k++) {
        record_t *rec = &u->records[k];
        if (rec->codec == C_REF || rec->codec == C_SLICE) continue;
        if (rec->packed_len > end - *pos) return REFUSED;
        const uint8_t *bulk = data + *pos;
        *pos += rec->packed_len;
        cursor_t meta = {index, rec->meta_at, rec->meta_at + rec->meta_len};
        int codec = rec->codec;
        rec->size = rec->raw_len;
        if (codec == C_BUNDLE) {
            if (meta.pos >= meta.end) return REFUSED;
            codec = index[meta.pos++];
            if (codec == C_REF || codec == C_SLICE || codec == C_BUNDLE || codec == C_CHUNKS ||
                rec->bundle_len < rec->raw_len)
                return REFUSED;
            if (codec != C_RAW && codec != C_PLANES) return UNSUPPORTED;
            rec->size = rec->bundle_len;
            bundled += rec->size;
            if (bundled > u->lim.max_total) return REFUSED;
        }
        int64_t need = rec->size;
        if (codec == C_RAW) {
            if (meta.pos != meta.end || rec->packed_len != rec->size) return REFUSED;
            rec->src = bulk;
        } else {
            const int status = parse_planes(&u->lim, &meta, bulk, rec->packed_len, rec->size, *extent, s, &need);
            if (status != DONE) return status;
            rec->base = *extent;
        }
        *extent += need;
        if (*extent > u->lim.max_total + (1 << 24)) return REFUSED; /* (_unpack checks the sum: it only grows) */
    }
    return DONE;
}

/* ---------------------------------------------------------------- decoding (rans.decode_batch and after) */

typedef struct {
    int64_t steps, index;
} order_t;

static int by_steps(const void *a, const void *b) { /* most steps first, file order among equals (lane_order) */
    const order_t *x = a, *y = b;
    if (x->steps != y->steps) return x->steps > y->steps ? -1 : 1;
    return x->index < y->index ? -1 : (x->index > y->index);
}

/* All rANS streams in lockstep over the word section, then each stream's carried bytes (place_carries). */
static int decode_streams(planes_t *s, const uint8_t *word_bytes, uint8_t *out, int64_t out_len) {
    const int64_t k = s->nstreams;
    if (k == 0) return DONE;
    int status = NO_MEMORY;
    order_t *order = malloc(sizeof(order_t) * k);
    int64_t *layout = malloc(sizeof(int64_t) * 5 * (k + 1));
    uint32_t *tab = malloc(sizeof(uint32_t) * TABLE_SIZE * k);
    uint16_t *words = malloc(sizeof(uint16_t) * (s->words ? s->words : 1));
    int64_t total_lanes = 0;
    for (int64_t i = 0; i < k; i++) total_lanes += s->streams[i].lanes;
    uint32_t *x = malloc(sizeof(uint32_t) * total_lanes);
    if (!order || !layout || !tab || !words || !x) goto done;
    status = REFUSED;
    memcpy(words, word_bytes, sizeof(uint16_t) * s->words); /* (little-endian words: checked by the caller) */
    for (int64_t i = 0; i < k; i++) order[i] = (order_t){s->streams[i].steps, i};
    qsort(order, (size_t)k, sizeof(order_t), by_steps);
    int64_t lane = 0;
    for (int64_t j = 0; j < k; j++) {
        stream_t *st = &s->streams[order[j].index];
        layout[j] = st->lanes;
        layout[(k + 1) + j] = st->steps;
        layout[2 * (k + 1) + j] = st->dest;
        layout[3 * (k + 1) + j] = st->stride;
        if (rans_header(st->header, st->header_len, st->lanes, tab + j * TABLE_SIZE, x + lane) != st->header_len)
            goto done; /* (cannot happen: the same bytes were read at parse time) */
        st->lane0 = lane;
        lane += st->lanes;
    }
    for (int r = 0; r < 4; r++) layout[r * (k + 1) + k] = 0;
    if (rans_decode(k, layout, x, tab, words, s->words, out, out_len) != s->words) goto done;
    for (int64_t i = 0; i < k; i++) {
        const stream_t *st = &s->streams[i];
        const uint32_t *carry = x + st->lane0;
        if (st->tail) { /* rows steps and steps + 1 of the plane: the lanes' own last two symbols */
            const int64_t first = st->dest + st->steps * st->lanes * st->stride;
            if (first + (2 * st->lanes - 1) * st->stride >= out_len) goto done;
            for (int64_t j = 0; j < st->lanes; j++) {
                out[first + j * st->stride] = (uint8_t)carry[j];
                out[first + (st->lanes + j) * st->stride] = (uint8_t)(carry[j] >> 8);
            }
        } else if (st->carry_at >= 0) { /* pool bytes carry_at.. of the payload's RAW planes, in order */
            const uint8_t *planes = s->pool_planes + st->pool_first;
            for (int64_t q = st->carry_at; q < st->carry_at + 2 * st->lanes; q++) {
                const int64_t at = st->base + (q % st->n) * st->stride + planes[q / st->n];
                const int64_t j = (q - st->carry_at) >> 1;
                out[at] = (uint8_t)((q - st->carry_at) & 1 ? carry[j] >> 8 : carry[j]);
            }
        }
    }
    status = DONE;
done:
    free(order);
    free(layout);
    free(tab);
    free(words);
    free(x);
    return status;
}

/* RAW and CONST planes (fill_planes): a RAW plane takes its run of the bulk, as far as the bulk goes. */
static void fill_planes(const planes_t *s, uint8_t *out) {
    for (int64_t i = 0; i < s->nfills; i++) {
        const plane_fill_t *f = &s->fills[i];
        uint8_t *o = out + f->base + f->plane;
        if (f->value >= 0) {
            for (int64_t r = 0; r < f->n; r++) o[r * f->itemsize] = (uint8_t)f->value;
            continue;
        }
        const int64_t from = f->pool_k * f->n, left = f->bulk_len - from, count = left < f->n ? left : f->n;
        const uint8_t *b = f->bulk + from;
        if (f->itemsize == 1 && count > 0) memcpy(o, b, (size_t)count);
        else
            for (int64_t r = 0; r < count; r++) o[r * f->itemsize] = b[r];
    }
}

/* ---------------------------------------------------------------- the whole path */

/* Everything up to the splice (no Python objects: run without the GIL): the index, every payload's parse,
   the planes and lanes decoded into *out, every checksum; *spliced: the model's size. */
static int decode_all(unpack_t *u, const uint8_t *index, int64_t index_len, const uint8_t *data, int64_t pos,
                      int64_t end, planes_t *s, uint8_t **out, int64_t *spliced) {
    int status = read_index(u, index, index_len);
    if (status != DONE) return status;
    int64_t total = 0;
    *spliced = u->skeleton_len;
    for (int64_t k = 0; k < u->count; k++) {
        const record_t *rec = &u->records[k];
        total += rec->raw_len;
        *spliced += rec->hole_len;
        if (total > u->lim.max_total || *spliced > u->lim.max_skeleton) return REFUSED;
        if (rec->codec == C_REF) {
            const record_t *to = &u->records[rec->ref];
            if (rec->ref >= k || to->raw_len != rec->raw_len || to->kind != rec->kind) return REFUSED;
        }
    }
    int64_t extent;
    if ((status = parse_payloads(u, index, data, &pos, end, s, &extent)) != DONE) return status;
    if (extent > u->lim.max_total + (1 << 24) || end - pos != 2 * s->words) return REFUSED;
    int64_t out_len = extent;
    for (int64_t i = 0; i < s->nstreams; i++) {
        const stream_t *st = &s->streams[i];
        const int64_t reach = st->dest + (st->lanes * st->steps - 1) * st->stride + 1;
        if (reach > out_len) out_len = reach;
    }
    *out = calloc((size_t)(out_len ? out_len : 1), 1);
    if (*out == NULL) return NO_MEMORY;
    fill_planes(s, *out);
    if ((status = decode_streams(s, data + pos, *out, out_len)) != DONE) return status;
    /* every payload against its CRC (a bundle's over the whole bundle), each slice and reference to its bytes */
    int64_t bundles = 0;
    for (int64_t k = 0; k < u->count; k++) {
        record_t *rec = &u->records[k];
        if (rec->codec == C_SLICE) { /* the next raw_len bytes of its bundle */
            rec->src = u->records[u->heads[rec->ref]].src + u->cursors[rec->ref];
            u->cursors[rec->ref] += rec->raw_len;
        } else if (rec->codec == C_REF) {
            rec->src = u->records[rec->ref].src;
        } else {
            if (rec->base >= 0) rec->src = *out + rec->base;
            if (crc32_of(rec->src, rec->size) != rec->crc) return REFUSED;
            if (rec->codec == C_BUNDLE) u->cursors[bundles++] = rec->raw_len;
        }
    }
    return DONE;
}

/* The skeleton with every hole filled (_splice), as a new bytes object (NULL if out of memory). */
static PyObject *splice(const unpack_t *u, int64_t spliced) {
    PyObject *result = PyBytes_FromStringAndSize(NULL, spliced);
    if (result == NULL) return NULL;
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(result);
    int64_t kept_from = 0;
    for (int64_t k = 0; k < u->count; k++) {
        const record_t *rec = &u->records[k];
        memcpy(o, u->skeleton + kept_from, (size_t)(rec->hole - kept_from));
        o += rec->hole - kept_from;
        memcpy(o, rec->src, (size_t)rec->hole_len);
        o += rec->hole_len;
        kept_from = rec->hole;
    }
    memcpy(o, u->skeleton + kept_from, (size_t)(u->skeleton_len - kept_from));
    return result;
}

static int run(unpack_t *u, const uint8_t *index, int64_t index_len, const uint8_t *data, int64_t pos, int64_t end,
               PyObject **result) {
    if (u->count > index_len / 3 + 1) return REFUSED; /* (a record takes at least three bytes) */
    planes_t s = {0};
    uint8_t *out = NULL;
    int64_t spliced = 0;
    int status = NO_MEMORY;
    const size_t n = (size_t)(u->count ? u->count : 1);
    u->records = malloc(sizeof(record_t) * n);
    u->heads = malloc(sizeof(int64_t) * n);
    u->cursors = malloc(sizeof(int64_t) * n);
    if (u->records && u->heads && u->cursors) {
        PyThreadState *state = PyEval_SaveThread();
        status = decode_all(u, index, index_len, data, pos, end, &s, &out, &spliced);
        PyEval_RestoreThread(state);
    }
    if (status == DONE && (*result = splice(u, spliced)) == NULL) status = NO_MEMORY;
    free(s.streams);
    free(s.fills);
    free(s.pool_planes);
    free(out);
    free(u->records);
    free(u->heads);
    free(u->cursors);
    return status;
}

/*
 * unpack_spliced(skeleton, index, data, start, end, records, max_tensor, max_total, max_skeleton, max_lanes,
 * max_steps): the model's bytes (the skeleton with every payload spliced in), or an int when this path
 * declines: 1 for a feature it leaves to the Python reader, 2 for anything the Python reader would refuse,
 * 3 when out of memory. data[start:end] is the file from the payloads to the trailer; the caller has
 * checked the trailer, inflated the skeleton and the index, checked their CRC, and made sure there is no
 * stream section (CHUNKS records are the Python reader's).
 */
PyObject *unpack_spliced(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "unpack_spliced takes 11 arguments");
        return NULL;
    }
    int64_t v[8];
    for (int i = 0; i < 8; i++) {
        v[i] = PyLong_AsLongLong(args[3 + i]);
        if (v[i] == -1 && PyErr_Occurred()) return NULL;
    }
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
    return PyLong_FromLong(UNSUPPORTED); /* (the word section is little-endian; big-endian hosts: Python path) */
#endif
    Py_buffer sk, ix, data;
    if (PyObject_GetBuffer(args[0], &sk, PyBUF_SIMPLE)) return NULL;
    if (PyObject_GetBuffer(args[1], &ix, PyBUF_SIMPLE)) {
        PyBuffer_Release(&sk);
        return NULL;
    }
    if (PyObject_GetBuffer(args[2], &data, PyBUF_SIMPLE)) {
        PyBuffer_Release(&sk);
        PyBuffer_Release(&ix);
        return NULL;
    }
    if (!crc_ready) crc_init();
    PyObject *result = NULL;
    int status = UNSUPPORTED;
    const int64_t start = v[0], end = v[1];
    if (0 <= start && start <= end && end <= data.len && v[2] >= 0) {
        unpack_t u = {(const uint8_t *)sk.buf, sk.len, {v[3], v[4], v[5], v[6], v[7]}, NULL, v[2], NULL, NULL, 0};
        status = run(&u, (const uint8_t *)ix.buf, ix.len, (const uint8_t *)data.buf, start, end, &result);
    }
    PyBuffer_Release(&sk);
    PyBuffer_Release(&ix);
    PyBuffer_Release(&data);
    if (status == DONE) return result;
    Py_XDECREF(result);
    if (PyErr_Occurred()) PyErr_Clear(); /* (PyBytes_FromStringAndSize's MemoryError: declined instead) */
    return PyLong_FromLong(status);
}
