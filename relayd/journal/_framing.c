/* The journal's record framing in C, without the GIL.
 *
 * frame_batch(first, bodies) gives exactly what relayd.journal.record's
 * Python frame_batch gives: for each JSON body (bytes), from sequence
 * number `first` on, the line "<seq> <crc32> <body>\n", crc32 being eight
 * lowercase hex digits of the zlib CRC-32 of the seq's digits followed by
 * the body.  The file thread calls it; with the GIL released while it
 * formats, the reactor thread runs meanwhile.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <zlib.h>

#define DIGITS_MAX 20           /* an unsigned 64-bit number in decimal */
#define FRAME_EXTRA (DIGITS_MAX + 1 + 8 + 1 + 1)

static size_t
decimal(unsigned long long value, char *out)
{
    char reversed[DIGITS_MAX];
    size_t n = 0;
    do {
        reversed[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    for (size_t i = 0; i < n; i++)
        out[i] = reversed[n - 1 - i];
    return n;
}

static char *
frame_one(char *out, unsigned long long seq, const char *body, size_t length)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = decimal(seq, out);
    uLong crc = crc32_z(crc32_z(0L, (const Bytef *)out, n), (const Bytef *)body, length);
    out += n;
    *out++ = ' ';
    for (int shift = 28; shift >= 0; shift -= 4)
        *out++ = hex[(crc >> shift) & 0xf];
    *out++ = ' ';
    memcpy(out, body, length);
    out += length;
    *out++ = '\n';
    return out;
}

static PyObject *
frame_batch(PyObject *module, PyObject *args)
{
    unsigned long long first;
    PyObject *bodies, *items, *result = NULL;
    const char **data = NULL;
    size_t *sizes = NULL;
    (void)module;
    if (!PyArg_ParseTuple(args, "KO", &first, &bodies))
        return NULL;
    /* a tuple of our own keeps the bodies alive while the GIL is released */
    items = PySequence_Tuple(bodies);
    if (items == NULL)
        return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(items);
    data = PyMem_New(const char *, count ? count : 1);
    sizes = PyMem_New(size_t, count ? count : 1);
    if (data == NULL || sizes == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    size_t total = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *body = PyTuple_GET_ITEM(items, i);
        if (!PyBytes_Check(body)) {
            PyErr_Format(PyExc_TypeError, "a journal record must be bytes, not %.100s",
                         Py_TYPE(body)->tp_name);
            goto done;
        }
        data[i] = PyBytes_AS_STRING(body);
        sizes[i] = (size_t)PyBytes_GET_SIZE(body);
        total += sizes[i] + FRAME_EXTRA;
        if (total > (size_t)PY_SSIZE_T_MAX) {
            PyErr_NoMemory();
            goto done;
        }
    }
    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (result == NULL)
        goto done;
    char *start = PyBytes_AS_STRING(result), *out = start;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count; i++)
        out = frame_one(out, first + (unsigned long long)i, data[i], sizes[i]);
    Py_END_ALLOW_THREADS
    _PyBytes_Resize(&result, out - start);
done:
    PyMem_Free(data);
    PyMem_Free(sizes);
    Py_DECREF(items);
    return result;
}

static PyMethodDef methods[] = {
    {"frame_batch", frame_batch, METH_VARARGS,
     "frame_batch(first, bodies) -> bytes: the journal lines of consecutive records."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "relayd.journal._framing",
    "The journal's record framing in C (relayd.journal.record).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__framing(void)
{
    return PyModule_Create(&module);
}
