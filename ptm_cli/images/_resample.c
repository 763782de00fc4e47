/*
 * ptm_cli.images._resample: the classifier's Resize -> CenterCrop -> ToTensor ->
 * Normalize in one pass over the pixels the crop keeps.
 *
 * It reproduces the resampling algorithm of Pillow (the Python Imaging
 * Library fork), Copyright (c) 1997-2011 by Secret Labs AB, Copyright (c)
 * 1995-2011 by Fredrik Lundh and contributors, Copyright (c) 2010 by Jeffrey
 * A. Clark and contributors, under the MIT-CMU licence: see LICENSES/Pillow.txt
 * and NOTICE.md.
 *
 * The numbers are Pillow's, bit for bit: the same filter weights computed in
 * double precision over the whole resized image, the same 22-bit fixed-point
 * coefficients, the two passes in Pillow's order with a rounded 8-bit image
 * between them, and torchvision's float32 division by 255, mean subtraction
 * and division by std (no multiplication there for a compiler to fuse). It is
 * built with the compiler's default floating-point settings, as Pillow is.
 * What changes is the work: Pillow resizes the whole
 * image and the crop throws most of it away; here only the source rows and
 * output columns that reach the crop are computed, and the float tensor is
 * written in height x width x channel order (the layout the models run in)
 * without an intermediate image.
 *
 * The pixels come from Pillow through the Arrow C data interface
 * (Image.__arrow_c_array__, Pillow 11.2 and newer): zero-copy access to an
 * RGB image stored as 4 bytes per pixel in one block. The caller falls back
 * to Pillow itself for anything else. The GIL is released while it computes.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The Arrow C data interface's two structures (a stable ABI). */
struct ArrowSchema {
    const char *format;
    const char *name;
    const char *metadata;
    int64_t flags;
    int64_t n_children;
    struct ArrowSchema **children;
    struct ArrowSchema *dictionary;
    void (*release)(struct ArrowSchema *);
    void *private_data;
};

struct ArrowArray {
    int64_t length;
    int64_t null_count;
    int64_t offset;
    int64_t n_buffers;
    int64_t n_children;
    const void **buffers;
    struct ArrowArray **children;
    struct ArrowArray *dictionary;
    void (*release)(struct ArrowArray *);
    void *private_data;
};

#define PRECISION_BITS (32 - 8 - 2)

/* The two passes are built for AVX2 as well as the baseline, and the loader picks what the CPU runs. */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SIMD_CLONES
#endif

/* The five convolution filters of Pillow's resize, with the same support and the same expressions. */
static double box_filter(double x) {
    if (x > -0.5 && x <= 0.5) {
        return 1.0;
    }
    return 0.0;
}

static double bilinear_filter(double x) {
    if (x < 0.0) {
        x = -x;
    }
    if (x < 1.0) {
        return 1.0 - x;
    }
    return 0.0;
}

static double hamming_filter(double x) {
    if (x < 0.0) {
        x = -x;
    }
    if (x == 0.0) {
        return 1.0;
    }
    if (x >= 1.0) {
        return 0.0;
    }
    x = x * M_PI;
    return sin(x) / x * (0.54f + 0.46f * cos(x));
}

static double bicubic_filter(double x) {
    const double a = -0.5;
    if (x < 0.0) {
        x = -x;
    }
    if (x < 1.0) {
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    }
    if (x < 2.0) {
        return (((x - 5) * x + 8) * x - 4) * a;
    }
    return 0.0;
}

static double sinc_filter(double x) {
    if (x == 0.0) {
        return 1.0;
    }
    x = x * M_PI;
    return sin(x) / x;
}

static double lanczos_filter(double x) {
    if (-3.0 <= x && x < 3.0) {
        return sinc_filter(x) * sinc_filter(x / 3);
    }
    return 0.0;
}

struct filter {
    double (*weight)(double);
    double support;
};

/* Indexed by Pillow's Resampling numbers: NEAREST 0 (not a convolution), LANCZOS 1, BILINEAR 2, BICUBIC 3,
 * BOX 4, HAMMING 5. */
static const struct filter FILTERS[6] = {
    {NULL, 0.0}, {lanczos_filter, 3.0}, {bilinear_filter, 1.0}, {bicubic_filter, 2.0},
    {box_filter, 0.5}, {hamming_filter, 1.0},
};

/* One axis: for every output position, its first source index, its tap count and its fixed-point weights. */
struct axis {
    int ksize;
    int *first;
    int *count;
    int32_t *weights; /* out_size x ksize */
};

static void axis_free(struct axis *a) { /* leaves the axis empty: freeing it again is harmless */
    free(a->first);
    free(a->count);
    free(a->weights);
    a->first = a->count = NULL;
    a->weights = NULL;
}

#define AXIS_NO_MEMORY (-1)
#define AXIS_TOO_LARGE (-2)

static int axis_init(struct axis *a, int in_size, int out_size, const struct filter *f) {
    double scale = (double)in_size / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = f->support * filterscale;
    if (!(support < (double)(1 << 28))) { /* positions and tap counts must stay far inside an int */
        return AXIS_TOO_LARGE;
    }
    int ksize = (int)ceil(support) * 2 + 1;
    double *k = malloc(sizeof(double) * (size_t)ksize);
    a->ksize = ksize;
    a->first = malloc(sizeof(int) * (size_t)out_size);
    a->count = malloc(sizeof(int) * (size_t)out_size);
    a->weights = malloc(sizeof(int32_t) * (size_t)out_size * (size_t)ksize);
    if (k == NULL || a->first == NULL || a->count == NULL || a->weights == NULL) {
        free(k);
        axis_free(a);
        return AXIS_NO_MEMORY;
    }
    for (int xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale;
        double ww = 0.0;
        double ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5);
        int xmax = (int)(center + support + 0.5);
        if (xmin < 0) {
            xmin = 0;
        }
        if (xmax > in_size) {
            xmax = in_size;
        }
        xmax -= xmin;
        for (int x = 0; x < xmax; x++) {
            double w = f->weight((x + xmin - center + 0.5) * ss);
            k[x] = w;
            ww += w;
        }
        int32_t *out = &a->weights[(size_t)xx * (size_t)ksize];
        for (int x = 0; x < ksize; x++) {
            double w = 0.0;
            if (x < xmax) {
                w = ww != 0.0 ? k[x] / ww : k[x];
            }
            out[x] = (int32_t)(w < 0 ? -0.5 + w * (1 << PRECISION_BITS) : 0.5 + w * (1 << PRECISION_BITS));
        }
        a->first[xx] = xmin;
        a->count[xx] = xmax;
    }
    free(k);
    return 0;
}

static inline uint8_t clip8(int32_t v) {
    v >>= PRECISION_BITS;
    return v < 0 ? 0 : (v > 255 ? 255 : (uint8_t)v);
}

/* Horizontal pass: output columns x0..x0+count of `rows` rows. Source pixels take 4 bytes (RGB and a
 * filler, as in Pillow's memory) and the source's column 0 is image column `col_base`; the output has 3
 * bytes per pixel. With no axis (no resize that way) it copies the columns. */
SIMD_CLONES static void horizontal_pass(const uint8_t *src, size_t src_stride, int col_base, int rows,
                                        const struct axis *a, int x0, int count, uint8_t *dst) {
    for (int y = 0; y < rows; y++) {
        const uint8_t *row = src + (size_t)y * src_stride;
        uint8_t *out = dst + (size_t)y * (size_t)count * 3;
        for (int xx = x0; xx < x0 + count; xx++, out += 3) {
            if (a == NULL) {
                memcpy(out, row + (size_t)(xx - col_base) * 4, 3);
                continue;
            }
            const int32_t *k = &a->weights[(size_t)xx * (size_t)a->ksize];
            const uint8_t *p = row + (size_t)(a->first[xx] - col_base) * 4;
            int32_t s[4] = {1 << (PRECISION_BITS - 1), 1 << (PRECISION_BITS - 1), 1 << (PRECISION_BITS - 1),
                            1 << (PRECISION_BITS - 1)};
            for (int x = 0, n = a->count[xx]; x < n; x++, p += 4) {
                for (int c = 0; c < 4; c++) { /* the fourth byte is filler: four lanes vectorise, three don't */
                    s[c] += p[c] * k[x];
                }
            }
            out[0] = clip8(s[0]);
            out[1] = clip8(s[1]);
            out[2] = clip8(s[2]);
        }
    }
}

/* Vertical pass: output rows y0..y0+count, each `nbytes` bytes taken from offset `byte0` of the source
 * rows (source row 0 is image row `row_base`), every byte filtered on its own. With no axis it copies
 * the rows. `acc` holds nbytes int32 values. */
SIMD_CLONES static void vertical_pass(const uint8_t *src, size_t src_stride, int row_base, size_t byte0,
                                      size_t nbytes, const struct axis *a, int y0, int count, uint8_t *dst, int32_t *acc) {
    for (int yy = y0; yy < y0 + count; yy++) {
        uint8_t *out = dst + (size_t)(yy - y0) * nbytes;
        if (a == NULL) {
            memcpy(out, src + (size_t)(yy - row_base) * src_stride + byte0, nbytes);
            continue;
        }
        const int32_t *k = &a->weights[(size_t)yy * (size_t)a->ksize];
        for (size_t i = 0; i < nbytes; i++) {
            acc[i] = 1 << (PRECISION_BITS - 1);
        }
        for (int y = 0, n = a->count[yy]; y < n; y++) {
            const uint8_t *row = src + (size_t)(a->first[yy] - row_base + y) * src_stride + byte0;
            const int32_t w = k[y];
            for (size_t i = 0; i < nbytes; i++) {
                acc[i] += row[i] * w;
            }
        }
        for (size_t i = 0; i < nbytes; i++) {
            out[i] = clip8(acc[i]);
        }
    }
}

/* The span of source positions that output positions first..first+count read. */
static void source_span(const struct axis *a, int first, int count, int *lo, int *hi) {
    *lo = a->first[first];
    *hi = *lo;
    for (int i = first; i < first + count; i++) {
        if (a->first[i] < *lo) {
            *lo = a->first[i];
        }
        if (a->first[i] + a->count[i] > *hi) {
            *hi = a->first[i] + a->count[i];
        }
    }
}

/* The crop's pixels as 8-bit RGB (crop_h x crop_w x 3): Pillow's two passes in Pillow's order, over only
 * the pixels the crop needs. `vertical_first` is that order (Pillow 13 runs the vertical pass first when
 * the height shrinks by more than twice as many pixels as the width; older releases never do). */
static int resample_crop(const uint8_t *pixels, int width, int height, int out_w, int out_h, int left, int top,
                         int crop_w, int crop_h, const struct filter *f, int vertical_first, uint8_t *rgb) {
    const size_t stride = (size_t)width * 4;
    struct axis ax = {0}, ay = {0};
    const struct axis *hx = NULL, *vy = NULL;
    uint8_t *temp = NULL;
    int32_t *acc = NULL;
    int status = -1;

    if (out_w != width) {
        if ((status = axis_init(&ax, width, out_w, f)) != 0) {
            goto done;
        }
        hx = &ax;
    }
    if (out_h != height) {
        if ((status = axis_init(&ay, height, out_h, f)) != 0) {
            goto done;
        }
        vy = &ay;
    }
    status = AXIS_NO_MEMORY;
    if (!vertical_first) {
        int row0 = top, row1 = top + crop_h;
        if (vy != NULL) {
            source_span(vy, top, crop_h, &row0, &row1);
        }
        size_t row_bytes = (size_t)crop_w * 3;
        temp = malloc((size_t)(row1 - row0) * row_bytes);
        acc = malloc(sizeof(int32_t) * row_bytes);
        if (temp == NULL || acc == NULL) {
            goto done;
        }
        horizontal_pass(pixels + (size_t)row0 * stride, stride, 0, row1 - row0, hx, left, crop_w, temp);
        vertical_pass(temp, row_bytes, row0, 0, row_bytes, vy, top, crop_h, rgb, acc);
    } else {
        int col0 = left, col1 = left + crop_w;
        if (hx != NULL) {
            source_span(hx, left, crop_w, &col0, &col1);
        }
        size_t row_bytes = (size_t)(col1 - col0) * 4;
        temp = malloc((size_t)crop_h * row_bytes);
        acc = malloc(sizeof(int32_t) * row_bytes);
        if (temp == NULL || acc == NULL) {
            goto done;
        }
        vertical_pass(pixels, stride, 0, (size_t)col0 * 4, row_bytes, vy, top, crop_h, temp, acc);
        horizontal_pass(temp, row_bytes, col0, crop_h, hx, left, crop_w, rgb);
    }
    status = 0;
done:
    free(temp);
    free(acc);
    axis_free(&ax);
    axis_free(&ay);
    return status;
}

/* The RGB pixels of a Pillow image exported through Arrow, or NULL with a Python exception set. */
static const uint8_t *arrow_pixels(PyObject *schema_capsule, PyObject *array_capsule, int width, int height) {
    struct ArrowSchema *schema = PyCapsule_GetPointer(schema_capsule, "arrow_schema");
    struct ArrowArray *array = PyCapsule_GetPointer(array_capsule, "arrow_array");
    if (schema == NULL || array == NULL) {
        return NULL;
    }
    int64_t pixels = (int64_t)width * height;
    /* A released (consumed) capsule's pointers are dangling: look at nothing else before these. */
    if (schema->release == NULL || array->release == NULL) {
        PyErr_SetString(PyExc_ValueError, "the Arrow capsules were already consumed");
        return NULL;
    }
    if (schema->format == NULL || strcmp(schema->format, "+w:4") != 0 || schema->n_children != 1 ||
        schema->children == NULL || schema->children[0] == NULL || schema->children[0]->format == NULL ||
        strcmp(schema->children[0]->format, "C") != 0 || array->length != pixels || array->offset != 0 ||
        array->null_count != 0 || array->n_children != 1 || array->children == NULL ||
        array->children[0] == NULL) {
        PyErr_SetString(PyExc_ValueError, "not an RGB image exported as 4 bytes per pixel");
        return NULL;
    }
    struct ArrowArray *child = array->children[0];
    if (child->n_buffers < 2 || child->buffers == NULL || child->buffers[1] == NULL || child->null_count != 0 ||
        child->offset != 0 || child->length < 4 * pixels) {
        PyErr_SetString(PyExc_ValueError, "the exported pixel buffer is shorter than the image");
        return NULL;
    }
    return (const uint8_t *)child->buffers[1];
}

PyDoc_STRVAR(resize_crop_doc,
             "resize_crop(schema, array, width, height, out_w, out_h, left, top, crop_w, crop_h, filter, "
             "vertical_first, out, mean, std)\n\n"
             "Write the crop (left, top, crop_w, crop_h) of the image resized to out_w x out_h into `out`, a "
             "writable C-contiguous float32 buffer of crop_h * crop_w * 3 values: each 8-bit value / 255, then "
             "minus mean and divided by std per channel (both None: neither). `schema` and `array` are the "
             "capsules of Image.__arrow_c_array__(); `filter` is a Pillow Resampling number other than NEAREST; "
             "`vertical_first` runs the vertical pass first (Pillow's order for this resize).");

static int three_floats(PyObject *seq, float out[3]) {
    if (seq == Py_None) {
        return 0;
    }
    PyObject *fast = PySequence_Fast(seq, "mean and std must be sequences of three numbers");
    if (fast == NULL) {
        return -1;
    }
    if (PySequence_Fast_GET_SIZE(fast) != 3) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "mean and std must have three values");
        return -1;
    }
    for (int i = 0; i < 3; i++) {
        double v = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(fast, i));
        if (v == -1.0 && PyErr_Occurred()) {
            Py_DECREF(fast);
            return -1;
        }
        out[i] = (float)v;
    }
    Py_DECREF(fast);
    return 1;
}

static PyObject *resize_crop(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *schema, *array, *out_obj, *mean_obj, *std_obj;
    int width, height, out_w, out_h, left, top, crop_w, crop_h, filter_id, vertical_first;
    if (!PyArg_ParseTuple(args, "OOiiiiiiiiipOOO", &schema, &array, &width, &height, &out_w, &out_h, &left, &top,
                          &crop_w, &crop_h, &filter_id, &vertical_first, &out_obj, &mean_obj, &std_obj)) {
        return NULL;
    }
    if (filter_id < 1 || filter_id > 5) {
        PyErr_SetString(PyExc_ValueError, "filter must be a Pillow Resampling number from 1 to 5");
        return NULL;
    }
    if (width < 1 || height < 1 || out_w < 1 || out_h < 1 || crop_w < 1 || crop_h < 1 || left < 0 || top < 0 ||
        left > out_w - crop_w || top > out_h - crop_h) {
        PyErr_SetString(PyExc_ValueError, "the crop must lie inside the resized image");
        return NULL;
    }
    float mean[3] = {0, 0, 0}, std[3] = {1, 1, 1};
    int has_mean = three_floats(mean_obj, mean);
    if (has_mean < 0) {
        return NULL;
    }
    int has_std = three_floats(std_obj, std);
    if (has_std < 0) {
        return NULL;
    }
    if (has_mean != has_std) {
        PyErr_SetString(PyExc_ValueError, "mean and std go together");
        return NULL;
    }
    const uint8_t *pixels = arrow_pixels(schema, array, width, height);
    if (pixels == NULL) {
        return NULL;
    }
    Py_buffer out;
    if (PyObject_GetBuffer(out_obj, &out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) {
        return NULL;
    }
    size_t values = (size_t)crop_w * (size_t)crop_h * 3;
    const char *format = out.format != NULL ? out.format : "B";
    if (out.itemsize != (Py_ssize_t)sizeof(float) ||
        (strcmp(format, "f") != 0 && strcmp(format, "<f") != 0 && strcmp(format, "=f") != 0) ||
        (uintptr_t)out.buf % sizeof(float) != 0 || (size_t)out.len != values * sizeof(float)) {
        PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "out must be an aligned buffer of crop_h * crop_w * 3 float32 values");
        return NULL;
    }
    uint8_t *rgb = malloc(values);
    if (rgb == NULL) {
        PyBuffer_Release(&out);
        return PyErr_NoMemory();
    }
    int status;
    Py_BEGIN_ALLOW_THREADS;
    status = resample_crop(pixels, width, height, out_w, out_h, left, top, crop_w, crop_h, &FILTERS[filter_id],
                           vertical_first, rgb);
    if (status == 0) {
        float *dst = out.buf;
        for (size_t i = 0; i < values; i += 3) {
            for (int c = 0; c < 3; c++) {
                float v = (float)rgb[i + c] / 255.0f;
                if (has_mean) {
                    v = v - mean[c];
                    v = v / std[c];
                }
                dst[i + c] = v;
            }
        }
    }
    Py_END_ALLOW_THREADS;
    free(rgb);
    PyBuffer_Release(&out);
    if (status == AXIS_TOO_LARGE) {
        PyErr_SetString(PyExc_ValueError, "the resize shrinks too far for one pass");
        return NULL;
    }
    if (status != 0) {
        return PyErr_NoMemory();
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"resize_crop", resize_crop, METH_VARARGS, resize_crop_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ptm_cli._resample",
    .m_doc = "Pillow's resize and torchvision's normalisation, for the crop only.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__resample(void) {
    return PyModule_Create(&module);
}
