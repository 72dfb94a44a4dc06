/*
 * The compiled form of schemas/avro/record_writer.py's values writers.
 *
 * A Program is built once per record schema and column order from a plan that
 * compiled_writer.py writes: for each field of the record, in order, what it is,
 * where its value sits in a row, and whether it is ["null", X]. Program.write(row)
 * returns the Avro binary body of the record whose values are row[position]: the
 * bytes the generated Python writer returns for the same row.
 *
 * Only the plain case is written here: an exact int within the field's range, an
 * exact str that encodes as UTF-8, an exact datetime (naive: a wall time in the
 * plan's zone; aware: its own offset), an exact Decimal or an amount's text that
 * the Python writer's own cache holds or its own function writes, None in a
 * nullable field. Anything else (a bool, a value out of range, text with a lone
 * surrogate, a zone with no offset, a row shorter than its positions) is given to
 * the generated Python writer (the Program's fallback), which writes the row or
 * raises what the Python writers raise (Unhandled: then fastavro, the reference,
 * writes it or names the column). tests/unit/test_record_writer.py checks both
 * forms against fastavro, byte for byte, on random rows.
 */
#include "_program.h"
#include <datetime.h>
#include <string.h>

enum { K_INT, K_LONG, K_STRING, K_TIMESTAMP, K_DECIMAL };

typedef struct {
    int kind;
    Py_ssize_t position;
    int nullable;
    PyObject *a;       /* TIMESTAMP: the wall zone, or None; DECIMAL: the kept dict */
    PyObject *b;       /* DECIMAL: the writer of a Decimal not kept */
    PyObject *c;       /* DECIMAL: the writer of an amount's text, or None (no text) */
    int fixed;         /* TIMESTAMP: the zone has one offset forever, offset_us */
    long long offset_us;
} Field;

/* -- an output buffer that starts on the stack ------------------------------------ */

typedef struct {
    char *d;
    Py_ssize_t n, size;
    char small[512];
} Out;

static int reserve(Out *o, Py_ssize_t more)
{
    if (o->n + more <= o->size)
        return 0;
    Py_ssize_t size = o->size * 2;
    while (size < o->n + more)
        size *= 2;
    char *d;
    if (o->d == o->small) {
        d = PyMem_Malloc(size);
        if (d != NULL)
            memcpy(d, o->small, o->n);
    } else {
        d = PyMem_Realloc(o->d, size);
    }
    if (d == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    o->d = d;
    o->size = size;
    return 0;
}

static int put(Out *o, const char *data, Py_ssize_t n)
{
    if (reserve(o, n) < 0)
        return -1;
    memcpy(o->d + o->n, data, n);
    o->n += n;
    return 0;
}

static int put_byte(Out *o, unsigned char byte)
{
    if (reserve(o, 1) < 0)
        return -1;
    o->d[o->n++] = (char)byte;
    return 0;
}

/* Avro's long: zig-zag, then seven bits a byte, low bits first. */
static int put_long(Out *o, long long value)
{
    unsigned long long n = ((unsigned long long)value << 1) ^ (unsigned long long)(value >> 63);
    if (reserve(o, 10) < 0)
        return -1;
    while (n > 0x7F) {
        o->d[o->n++] = (char)((n & 0x7F) | 0x80);
        n >>= 7;
    }
    o->d[o->n++] = (char)n;
    return 0;
}

/* -- values ----------------------------------------------------------------------- */

/* A value this code does not write: the fallback writes the row. */
static PyObject *Unwritten;

static int leave(void)
{
    if (!PyErr_Occurred())
        PyErr_SetNone(Unwritten);
    return -1;
}

static int write_int(Out *o, PyObject *v, int bits32)
{
    if (!PyLong_CheckExact(v))
        return leave();
    int overflow;
    long long n = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || (n == -1 && PyErr_Occurred()))
        return leave();
    if (bits32 && (n < -2147483648LL || n > 2147483647LL))
        return leave();
    return put_long(o, n);
}

static int write_string(Out *o, PyObject *v)
{
    if (!PyUnicode_CheckExact(v))
        return leave();
    Py_ssize_t n;
    const char *data = PyUnicode_AsUTF8AndSize(v, &n);  /* NULL for a lone surrogate */
    if (data == NULL)
        return -1;
    if (put_long(o, n) < 0)
        return -1;
    return put(o, data, n);
}

/* Days from 0001-01-01 (ordinal 1) as datetime.toordinal() counts them. */
static long long ordinal(int y, int m, int d)
{
    static const int before[13] = {0, 0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334};
    long long year = y - 1;
    long long days = year * 365 + year / 4 - year / 100 + year / 400 + before[m] + d;
    if (m > 2 && (y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)))
        days += 1;
    return days;
}

#define EPOCH_ORDINAL 719163LL  /* date(1970, 1, 1).toordinal() */

static PyObject *UTCOFFSET;  /* "utcoffset", interned */

static long long delta_us(PyObject *delta)
{
    return ((long long)PyDateTime_DELTA_GET_DAYS(delta) * 86400LL
            + PyDateTime_DELTA_GET_SECONDS(delta)) * 1000000LL
           + PyDateTime_DELTA_GET_MICROSECONDS(delta);
}

/* timestamp-micros: the microseconds since the epoch of an aware datetime, or of a
 * naive one as the wall time it is in the field's zone (fold as it is). */
static int write_timestamp(Out *o, Field *f, PyObject *v)
{
    if (!PyDateTime_CheckExact(v))
        return leave();
    long long offset;
    PyObject *tz = PyDateTime_DATE_GET_TZINFO(v);  /* borrowed; None when naive */
    if (tz == Py_None && f->fixed) {
        offset = f->offset_us;
    } else {
        PyObject *delta;
        if (tz != Py_None)
            delta = PyObject_CallMethodNoArgs(v, UTCOFFSET);
        else if (f->a != Py_None)
            delta = PyObject_CallMethodOneArg(f->a, UTCOFFSET, v);
        else
            return leave();  /* a naive stamp with no wall zone */
        if (delta == NULL)
            return -1;
        if (!PyDelta_Check(delta)) {  /* None: no offset there */
            Py_DECREF(delta);
            return leave();
        }
        offset = delta_us(delta);
        Py_DECREF(delta);
    }
    long long days = ordinal(PyDateTime_GET_YEAR(v), PyDateTime_GET_MONTH(v),
                             PyDateTime_GET_DAY(v)) - EPOCH_ORDINAL;
    long long seconds = days * 86400LL + PyDateTime_DATE_GET_HOUR(v) * 3600LL
                        + PyDateTime_DATE_GET_MINUTE(v) * 60LL + PyDateTime_DATE_GET_SECOND(v);
    return put_long(o, seconds * 1000000LL + PyDateTime_DATE_GET_MICROSECOND(v) - offset);
}

static PyObject *DecimalType;

/* The bytes kept under ``key`` in ``kept``, else those ``writer(value)`` returns (a new
 * reference, or NULL with an exception set). */
static PyObject *kept_or_written(PyObject *kept, PyObject *key, PyObject *writer, PyObject *value)
{
    PyObject *found = PyDict_GetItemWithError(kept, key);  /* borrowed */
    if (found != NULL)
        return Py_NewRef(found);
    if (PyErr_Occurred())
        return NULL;
    return PyObject_CallOneArg(writer, value);
}

/* A decimal's bytes (length first) as the Python writer keeps or writes them: a Decimal
 * kept by its text, an amount's text by itself. */
static int write_decimal(Out *o, Field *f, PyObject *v)
{
    PyObject *found;
    if (Py_IS_TYPE(v, (PyTypeObject *)DecimalType)) {
        PyObject *text = PyObject_Str(v);
        if (text == NULL)
            return -1;
        found = kept_or_written(f->a, text, f->b, v);
        Py_DECREF(text);
    } else if (PyUnicode_CheckExact(v) && f->c != Py_None) {
        found = kept_or_written(f->a, v, f->c, v);
    } else {
        return leave();
    }
    if (found == NULL)
        return -1;
    int result = PyBytes_Check(found) && PyBytes_GET_SIZE(found) > 0
                     ? put(o, PyBytes_AS_STRING(found), PyBytes_GET_SIZE(found))
                     : leave();
    Py_DECREF(found);
    return result;
}

static int write_field(Out *o, Field *f, PyObject *v)
{
    if (f->nullable) {
        if (v == Py_None)
            return put_byte(o, 0);
        if (put_byte(o, 2) < 0)
            return -1;
    }
    switch (f->kind) {
    case K_INT:
        return write_int(o, v, 1);
    case K_LONG:
        return write_int(o, v, 0);
    case K_STRING:
        return write_string(o, v);
    case K_TIMESTAMP:
        return write_timestamp(o, f, v);
    case K_DECIMAL:
        return write_decimal(o, f, v);
    }
    return leave();
}

static int write_row(Out *o, Field *fields, Py_ssize_t count, PyObject *row)
{
    int tuple = PyTuple_CheckExact(row);
    for (Py_ssize_t i = 0; i < count; i++) {
        Field *f = &fields[i];
        int result;
        if (tuple) {  /* immutable, held by the caller: its items are borrowed */
            if (f->position >= PyTuple_GET_SIZE(row))
                return leave();
            result = write_field(o, f, PyTuple_GET_ITEM(row, f->position));
        } else {  /* a list or another sequence: each item held while it is written */
            PyObject *v = PySequence_GetItem(row, f->position);
            if (v == NULL)
                return -1;
            result = write_field(o, f, v);
            Py_DECREF(v);
        }
        if (result < 0)
            return -1;
    }
    return 0;
}

/* -- the Program type ------------------------------------------------------------ */

typedef struct {
    PROGRAM_HEAD
    Field *fields;
    Py_ssize_t count;
} Program;

static const char *const KINDS[] = {"int", "long", "string", "timestamp", "decimal"};

/* One field's plan, borrowed (the Program keeps the plan alive):
 * (kind, position, nullable) and, for a timestamp, (zone or None, offset µs or None);
 * for a decimal, (kept dict, writer, text writer or None). */
static int build_field(Field *f, PyObject *entry)
{
    if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) < 3) {
        PyErr_SetString(PyExc_TypeError, "a field's plan is (kind, position, nullable, ...)");
        return -1;
    }
    const char *kind = PyUnicode_AsUTF8(PyTuple_GET_ITEM(entry, 0));
    if (kind == NULL)
        return -1;
    f->kind = -1;
    for (int k = 0; k < (int)(sizeof KINDS / sizeof KINDS[0]); k++)
        if (strcmp(kind, KINDS[k]) == 0)
            f->kind = k;
    f->position = PyLong_AsSsize_t(PyTuple_GET_ITEM(entry, 1));
    if (f->position == -1 && PyErr_Occurred())
        return -1;
    f->nullable = PyObject_IsTrue(PyTuple_GET_ITEM(entry, 2));
    Py_ssize_t size = PyTuple_GET_SIZE(entry);
    if (f->kind < 0 || f->position < 0 || f->nullable < 0
        || (f->kind == K_TIMESTAMP && size != 5) || (f->kind == K_DECIMAL && size != 6)
        || (f->kind < K_TIMESTAMP && size != 3)) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError, "not a field's plan: %R", entry);
        return -1;
    }
    if (f->kind == K_TIMESTAMP) {
        f->a = PyTuple_GET_ITEM(entry, 3);
        PyObject *offset = PyTuple_GET_ITEM(entry, 4);
        f->fixed = offset != Py_None;
        if (f->fixed) {
            f->offset_us = PyLong_AsLongLong(offset);
            if (f->offset_us == -1 && PyErr_Occurred())
                return -1;
        }
    } else if (f->kind == K_DECIMAL) {
        f->a = PyTuple_GET_ITEM(entry, 3);
        f->b = PyTuple_GET_ITEM(entry, 4);
        f->c = PyTuple_GET_ITEM(entry, 5);
        if (!PyDict_CheckExact(f->a) || !PyCallable_Check(f->b)
            || (f->c != Py_None && !PyCallable_Check(f->c))) {
            PyErr_SetString(PyExc_TypeError, "a decimal's plan is (..., dict, writer, text writer)");
            return -1;
        }
    }
    return 0;
}

static void Program_dealloc(Program *self)
{
    PyMem_Free(self->fields);
    program_clear((PyObject *)self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int build_fields(PyObject *self, PyObject *plan)
{
    if (!PyTuple_Check(plan)) {
        PyErr_SetString(PyExc_TypeError, "a plan is a tuple of fields' plans");
        return -1;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(plan);
    Field *fields = PyMem_Calloc(count ? count : 1, sizeof(Field));
    if (fields == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        if (build_field(&fields[i], PyTuple_GET_ITEM(plan, i)) < 0) {
            PyMem_Free(fields);
            return -1;
        }
    }
    PyMem_Free(((Program *)self)->fields);
    ((Program *)self)->fields = fields;
    ((Program *)self)->count = count;
    return 0;
}

static int Program_init(Program *self, PyObject *args, PyObject *kwds)
{
    return program_init((PyObject *)self, args, kwds, build_fields);
}

static PyObject *Program_write(Program *self, PyObject *row)
{
    if (program_ready((PyObject *)self) < 0)
        return NULL;
    Out o;
    o.d = o.small;
    o.n = 0;
    o.size = sizeof o.small;
    PyObject *written = NULL;
    if (write_row(&o, self->fields, self->count, row) == 0)
        written = PyBytes_FromStringAndSize(o.d, o.n);
    if (o.d != o.small)
        PyMem_Free(o.d);
    if (written != NULL)
        return written;
    /* Not written here (a value it leaves, or a cache's writer failed): the fallback
     * writes the row or raises what the Python writers raise. */
    PyErr_Clear();
    return PyObject_CallOneArg(self->fallback, row);
}

static PyMethodDef Program_methods[] = {
    {"write", (PyCFunction)Program_write, METH_O,
     "write(row): the Avro body of the record whose values row holds"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ProgramType = PROGRAM_TYPE(
    "schemas.avro._cwriter.Program", Program, Program_dealloc, Program_init, Program_methods,
    "Program(plan, fallback): a compiled Avro writer of one record's values");

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "schemas.avro._cwriter",
    .m_doc = "Compiled Avro values writers (see schemas/avro/record_writer.py)",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__cwriter(void)
{
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL)
        return NULL;
    UTCOFFSET = PyUnicode_InternFromString("utcoffset");
    if (UTCOFFSET == NULL)
        return NULL;
    PyObject *decimal = PyImport_ImportModule("decimal");
    if (decimal == NULL)
        return NULL;
    DecimalType = PyObject_GetAttrString(decimal, "Decimal");
    Py_DECREF(decimal);
    if (DecimalType == NULL)
        return NULL;
    return program_module(&module, &ProgramType, "Unwritten", &Unwritten);
}
