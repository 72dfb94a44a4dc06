/*
 * The compiled form of schemas/avro/fast_reader.py's generated readers.
 *
 * A Program is built once per schema (and projection) from a plan of nested tuples
 * that fast_reader.py writes (_plan): what each value is and, for a record, which
 * fields are kept (a name) and which are skipped (None). Program.read(data, p)
 * returns what the generated Python reader returns for the same bytes: the same
 * dicts, keys and values; timestamps and decimals come from the same ValueCache
 * (its dicts and makers are in the plan).
 *
 * Only the well-formed case is handled here. On anything else (the message ends
 * early, a negative length, a branch or enum index out of range, text that is not
 * UTF-8, a varint longer than 64 bits, data that is not bytes) the read is given to
 * the generated Python reader (the Program's fallback), which returns the value or
 * raises the error the Python readers raise. tests/unit/test_fast_reader.py checks
 * both against fastavro on random records.
 */
#include "_program.h"
#include <string.h>

enum {
    K_NULL, K_BOOL, K_LONG, K_FLOAT, K_DOUBLE, K_STRING, K_BYTES, K_FIXED,
    K_TIMESTAMP, K_DECIMAL, K_ENUM, K_MAP, K_UNION, K_RECORD
};

typedef struct Node {
    int kind;
    Py_ssize_t n;        /* FIXED: size; ENUM: symbols; UNION: branches; RECORD: fields */
    PyObject *a;         /* TIMESTAMP, DECIMAL: the cache dict; ENUM: the symbols tuple */
    PyObject *b;         /* TIMESTAMP, DECIMAL: the maker for a value not cached */
    struct Node **kids;  /* UNION: branches; RECORD: fields; MAP: kids[0], the values */
    PyObject **names;    /* RECORD: each field's name, NULL where it is skipped */
} Node;

typedef struct {
    const unsigned char *d;
    Py_ssize_t p, end;
    PyObject *data;
} Cur;

/* A read that this code does not finish: the fallback does it. */
static PyObject *Unread;

static int fail(void)
{
    if (!PyErr_Occurred())
        PyErr_SetNone(Unread);
    return -1;
}

static void free_node(Node *node)
{
    if (node == NULL)
        return;
    if (node->kids != NULL) {
        Py_ssize_t count = node->kind == K_MAP ? 1 : node->n;
        for (Py_ssize_t i = 0; i < count; i++)
            free_node(node->kids[i]);
        PyMem_Free(node->kids);
    }
    PyMem_Free(node->names);
    PyMem_Free(node);
}

/* A plan is borrowed: the Program keeps the whole plan alive. */
static Node *build(PyObject *plan)
{
    if (!PyTuple_Check(plan) || PyTuple_GET_SIZE(plan) < 1) {
        PyErr_SetString(PyExc_TypeError, "a plan is a tuple (kind, ...)");
        return NULL;
    }
    const char *kind = PyUnicode_AsUTF8(PyTuple_GET_ITEM(plan, 0));
    if (kind == NULL)
        return NULL;
    Node *node = PyMem_Calloc(1, sizeof(Node));
    if (node == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    Py_ssize_t size = PyTuple_GET_SIZE(plan);
    if (strcmp(kind, "null") == 0) node->kind = K_NULL;
    else if (strcmp(kind, "boolean") == 0) node->kind = K_BOOL;
    else if (strcmp(kind, "long") == 0) node->kind = K_LONG;
    else if (strcmp(kind, "float") == 0) node->kind = K_FLOAT;
    else if (strcmp(kind, "double") == 0) node->kind = K_DOUBLE;
    else if (strcmp(kind, "string") == 0) node->kind = K_STRING;
    else if (strcmp(kind, "bytes") == 0) node->kind = K_BYTES;
    else if (strcmp(kind, "fixed") == 0 && size == 2) {
        node->kind = K_FIXED;
        node->n = PyLong_AsSsize_t(PyTuple_GET_ITEM(plan, 1));
        if (node->n < 0) goto bad;
    }
    else if ((strcmp(kind, "timestamp") == 0 || strcmp(kind, "decimal") == 0) && size == 3) {
        node->kind = kind[0] == 't' ? K_TIMESTAMP : K_DECIMAL;
        node->a = PyTuple_GET_ITEM(plan, 1);
        node->b = PyTuple_GET_ITEM(plan, 2);
        if (!PyDict_Check(node->a) || !PyCallable_Check(node->b)) goto bad;
    }
    else if (strcmp(kind, "enum") == 0 && size == 2) {
        node->kind = K_ENUM;
        node->a = PyTuple_GET_ITEM(plan, 1);
        if (!PyTuple_Check(node->a)) goto bad;
        node->n = PyTuple_GET_SIZE(node->a);
    }
    else if (strcmp(kind, "map") == 0 && size == 2) {
        node->kind = K_MAP;
        node->kids = PyMem_Calloc(1, sizeof(Node *));
        if (node->kids == NULL) goto nomem;
        node->kids[0] = build(PyTuple_GET_ITEM(plan, 1));
        if (node->kids[0] == NULL) goto error;
    }
    else if ((strcmp(kind, "union") == 0 || strcmp(kind, "record") == 0) && size == 2) {
        PyObject *items = PyTuple_GET_ITEM(plan, 1);
        if (!PyTuple_Check(items)) goto bad;
        int record = kind[0] == 'r';
        node->kind = record ? K_RECORD : K_UNION;
        node->n = PyTuple_GET_SIZE(items);
        node->kids = PyMem_Calloc(node->n ? node->n : 1, sizeof(Node *));
        if (node->kids == NULL) goto nomem;
        if (record) {
            node->names = PyMem_Calloc(node->n ? node->n : 1, sizeof(PyObject *));
            if (node->names == NULL) goto nomem;
        }
        for (Py_ssize_t i = 0; i < node->n; i++) {
            PyObject *item = PyTuple_GET_ITEM(items, i);
            if (record) {  /* (name or None, plan) */
                if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) goto bad;
                PyObject *name = PyTuple_GET_ITEM(item, 0);
                if (name != Py_None && !PyUnicode_Check(name)) goto bad;
                node->names[i] = name == Py_None ? NULL : name;
                item = PyTuple_GET_ITEM(item, 1);
            }
            node->kids[i] = build(item);
            if (node->kids[i] == NULL) goto error;
        }
    }
    else goto bad;
    return node;
bad:
    PyErr_Format(PyExc_ValueError, "not a reader plan: %R", plan);
    goto error;
nomem:
    PyErr_NoMemory();
error:
    free_node(node);
    return NULL;
}

/* -- reading ------------------------------------------------------------------- */

static inline int read_long(Cur *c, long long *out)
{
    unsigned long long n = 0;
    int shift = 0;
    for (;;) {
        if (c->p >= c->end)
            return fail();
        unsigned char b = c->d[c->p++];
        /* The tenth byte holds bit 63 only; more is a value past 64 bits, which the Python
         * reader reads as the large int it is: left to it. */
        if (shift == 63 && (b & 0x7E))
            return fail();
        n |= (unsigned long long)(b & 0x7F) << shift;
        if (!(b & 0x80))
            break;
        shift += 7;
        if (shift > 63)
            return fail();
    }
    *out = (long long)(n >> 1) ^ -(long long)(n & 1);
    return 0;
}

/* A length and its payload's start; the cursor moves past the payload. */
static inline int read_span(Cur *c, Py_ssize_t *start, Py_ssize_t *size)
{
    long long n;
    if (read_long(c, &n) < 0 || n < 0 || n > c->end - c->p)
        return fail();
    *start = c->p;
    *size = (Py_ssize_t)n;
    c->p += (Py_ssize_t)n;
    return 0;
}

static int skip(Node *node, Cur *c);

static PyObject *read_value(Node *node, Cur *c)
{
    long long n;
    Py_ssize_t start, size;
    switch (node->kind) {
    case K_NULL:
        Py_RETURN_NONE;
    case K_BOOL:
        if (c->p >= c->end) { fail(); return NULL; }
        return PyBool_FromLong(c->d[c->p++] != 0);
    case K_LONG:
        if (read_long(c, &n) < 0) return NULL;
        return PyLong_FromLongLong(n);
    case K_FLOAT:
        if (c->end - c->p < 4) { fail(); return NULL; }
        c->p += 4;
        return PyFloat_FromDouble(PyFloat_Unpack4((const char *)c->d + c->p - 4, 1));
    case K_DOUBLE:
        if (c->end - c->p < 8) { fail(); return NULL; }
        c->p += 8;
        return PyFloat_FromDouble(PyFloat_Unpack8((const char *)c->d + c->p - 8, 1));
    case K_STRING:
        if (read_span(c, &start, &size) < 0) return NULL;
        return PyUnicode_DecodeUTF8((const char *)c->d + start, size, NULL);
    case K_BYTES:
        if (read_span(c, &start, &size) < 0) return NULL;
        return PyBytes_FromStringAndSize((const char *)c->d + start, size);
    case K_FIXED:
        if (c->end - c->p < node->n) { fail(); return NULL; }
        c->p += node->n;
        return PyBytes_FromStringAndSize((const char *)c->d + c->p - node->n, node->n);
    case K_TIMESTAMP: {
        /* The cache holds instants by their varint of exactly eight bytes. */
        if (c->end - c->p >= 8) {
            PyObject *key = PyBytes_FromStringAndSize((const char *)c->d + c->p, 8);
            if (key == NULL) return NULL;
            PyObject *known = PyDict_GetItemWithError(node->a, key);
            Py_DECREF(key);
            if (known != NULL) {
                c->p += 8;
                return Py_NewRef(known);
            }
            if (PyErr_Occurred()) return NULL;
        }
        PyObject *made = PyObject_CallFunction(node->b, "On", c->data, c->p);
        if (made == NULL) return NULL;
        if (!PyTuple_Check(made) || PyTuple_GET_SIZE(made) != 2) {
            Py_DECREF(made);
            fail();
            return NULL;
        }
        Py_ssize_t after = PyLong_AsSsize_t(PyTuple_GET_ITEM(made, 1));
        if (after < c->p || after > c->end) {
            Py_DECREF(made);
            fail();
            return NULL;
        }
        c->p = after;
        PyObject *value = Py_NewRef(PyTuple_GET_ITEM(made, 0));
        Py_DECREF(made);
        return value;
    }
    case K_DECIMAL: {
        if (read_span(c, &start, &size) < 0) return NULL;
        PyObject *raw = PyBytes_FromStringAndSize((const char *)c->d + start, size);
        if (raw == NULL) return NULL;
        PyObject *known = PyDict_GetItemWithError(node->a, raw);
        if (known != NULL) {
            Py_DECREF(raw);
            return Py_NewRef(known);
        }
        if (PyErr_Occurred()) {
            Py_DECREF(raw);
            return NULL;
        }
        PyObject *value = PyObject_CallOneArg(node->b, raw);
        Py_DECREF(raw);
        return value;
    }
    case K_ENUM:
        if (read_long(c, &n) < 0) return NULL;
        if (n < 0 || n >= node->n) { fail(); return NULL; }
        return Py_NewRef(PyTuple_GET_ITEM(node->a, (Py_ssize_t)n));
    case K_UNION:
        if (read_long(c, &n) < 0) return NULL;
        if (n < 0 || n >= node->n) { fail(); return NULL; }
        return read_value(node->kids[n], c);
    case K_RECORD: {
        PyObject *record = PyDict_New();
        if (record == NULL) return NULL;
        for (Py_ssize_t i = 0; i < node->n; i++) {
            if (node->names[i] == NULL) {
                if (skip(node->kids[i], c) < 0) goto record_error;
                continue;
            }
            PyObject *value = read_value(node->kids[i], c);
            if (value == NULL) goto record_error;
            int set = PyDict_SetItem(record, node->names[i], value);
            Py_DECREF(value);
            if (set < 0) goto record_error;
        }
        return record;
    record_error:
        Py_DECREF(record);
        return NULL;
    }
    case K_MAP: {
        PyObject *map = PyDict_New();
        if (map == NULL) return NULL;
        for (;;) {
            if (read_long(c, &n) < 0) goto map_error;
            if (n == 0) return map;
            if (n < 0) {
                long long bytes;
                n = -n;
                if (read_long(c, &bytes) < 0) goto map_error;
            }
            for (long long i = 0; i < n; i++) {
                if (read_span(c, &start, &size) < 0) goto map_error;
                PyObject *key = PyUnicode_DecodeUTF8((const char *)c->d + start, size, NULL);
                if (key == NULL) goto map_error;
                PyObject *value = read_value(node->kids[0], c);
                if (value == NULL) {
                    Py_DECREF(key);
                    goto map_error;
                }
                int set = PyDict_SetItem(map, key, value);
                Py_DECREF(key);
                Py_DECREF(value);
                if (set < 0) goto map_error;
            }
        }
    map_error:
        Py_DECREF(map);
        return NULL;
    }
    }
    fail();
    return NULL;
}

static int skip(Node *node, Cur *c)
{
    long long n;
    Py_ssize_t start, size;
    switch (node->kind) {
    case K_NULL:
        return 0;
    case K_BOOL:
        if (c->p >= c->end) return fail();
        c->p += 1;
        return 0;
    case K_LONG:
    case K_TIMESTAMP:
    case K_ENUM:
        return read_long(c, &n);
    case K_FLOAT:
    case K_DOUBLE:
    case K_FIXED: {
        Py_ssize_t width = node->kind == K_FLOAT ? 4 : node->kind == K_DOUBLE ? 8 : node->n;
        if (c->end - c->p < width) return fail();
        c->p += width;
        return 0;
    }
    case K_STRING:
    case K_BYTES:
    case K_DECIMAL:
        return read_span(c, &start, &size);
    case K_UNION:
        if (read_long(c, &n) < 0) return -1;
        if (n < 0 || n >= node->n) return fail();
        return skip(node->kids[n], c);
    case K_RECORD:
        for (Py_ssize_t i = 0; i < node->n; i++)
            if (skip(node->kids[i], c) < 0) return -1;
        return 0;
    case K_MAP: {
        /* Read as a value: maps are rare enough (the generated reader does the same). */
        PyObject *map = read_value(node, c);
        if (map == NULL) return -1;
        Py_DECREF(map);
        return 0;
    }
    }
    return fail();
}

/* -- the Program type ------------------------------------------------------------ */

typedef struct {
    PROGRAM_HEAD
    Node *root;
} Program;

static void Program_dealloc(Program *self)
{
    free_node(self->root);
    program_clear((PyObject *)self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int build_root(PyObject *self, PyObject *plan)
{
    Node *root = build(plan);
    if (root == NULL)
        return -1;
    free_node(((Program *)self)->root);
    ((Program *)self)->root = root;
    return 0;
}

static int Program_init(Program *self, PyObject *args, PyObject *kwds)
{
    return program_init((PyObject *)self, args, kwds, build_root);
}

static PyObject *Program_read(Program *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "read(data, position)");
        return NULL;
    }
    if (program_ready((PyObject *)self) < 0)
        return NULL;
    PyObject *data = args[0];
    Py_ssize_t p = PyLong_AsSsize_t(args[1]);
    if (p == -1 && PyErr_Occurred())
        return NULL;
    if (self->root != NULL && PyBytes_CheckExact(data) && p >= 0) {
        Cur c = {(const unsigned char *)PyBytes_AS_STRING(data), p, PyBytes_GET_SIZE(data), data};
        PyObject *value = read_value(self->root, &c);
        if (value != NULL)
            return value;
        /* Not read here (malformed, or a cache's maker failed): the fallback reads it
         * and raises what the Python readers raise. */
        PyErr_Clear();
    }
    return PyObject_Vectorcall(self->fallback, args, nargs, NULL);
}

static PyMethodDef Program_methods[] = {
    {"read", (PyCFunction)(void (*)(void))Program_read, METH_FASTCALL,
     "read(data, position): the value that starts at position"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ProgramType = PROGRAM_TYPE(
    "schemas.avro._creader.Program", Program, Program_dealloc, Program_init, Program_methods,
    "Program(plan, fallback): a compiled Avro reader of one schema");

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "schemas.avro._creader",
    .m_doc = "Compiled Avro readers (see schemas/avro/fast_reader.py)",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__creader(void)
{
    return program_module(&module, &ProgramType, "Unread", &Unread);
}
