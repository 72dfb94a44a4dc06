/*
 * What the compiled Avro readers (_creader.c) and writers (_cwriter.c) share: a
 * Program type built from a plan, with the generated Python code as its fallback,
 * in a module of its own with an exception for what the C code leaves to Python.
 *
 * A source file defines its Program struct with PROGRAM_HEAD first, its build and
 * free of the plan, and its methods; program_init, program_ready and program_module
 * do the rest alike for both.
 */
#ifndef QUEUESTREAM_AVRO_PROGRAM_H
#define QUEUESTREAM_AVRO_PROGRAM_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* The fields every Program starts with: the plan (kept alive: what was built from it
 * borrows it) and the generated Python code that does what the C code leaves. */
#define PROGRAM_HEAD \
    PyObject_HEAD    \
    PyObject *plan;  \
    PyObject *fallback;

typedef struct {
    PROGRAM_HEAD
} ProgramHead;

/* Program(plan, fallback).__init__: the arguments checked and kept; ``build`` makes
 * the compiled form of ``plan`` (0, or -1 with an exception set) once they are. */
static int program_init(PyObject *self, PyObject *args, PyObject *kwds,
                        int (*build)(PyObject *self, PyObject *plan))
{
    static char *kwlist[] = {"plan", "fallback", NULL};
    PyObject *plan, *fallback;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO", kwlist, &plan, &fallback))
        return -1;
    if (!PyCallable_Check(fallback)) {
        PyErr_SetString(PyExc_TypeError, "fallback must be callable");
        return -1;
    }
    if (build(self, plan) < 0)
        return -1;
    ProgramHead *head = (ProgramHead *)self;
    Py_XSETREF(head->plan, Py_NewRef(plan));
    Py_XSETREF(head->fallback, Py_NewRef(fallback));
    return 0;
}

/* Whether the Program was initialised (one made by __new__ alone was not): -1 with a
 * TypeError set if not. */
static int program_ready(PyObject *self)
{
    if (((ProgramHead *)self)->fallback != NULL)
        return 0;
    PyErr_SetString(PyExc_TypeError, "Program(plan, fallback) was not initialised");
    return -1;
}

/* The Program type of a module: ``object`` its struct (PROGRAM_HEAD first). */
#define PROGRAM_TYPE(qualified, object, dealloc, init, methods, doc) { \
    PyVarObject_HEAD_INIT(NULL, 0)                                      \
    .tp_name = qualified,                                               \
    .tp_basicsize = sizeof(object),                                     \
    .tp_dealloc = (destructor)(dealloc),                                \
    .tp_flags = Py_TPFLAGS_DEFAULT,                                     \
    .tp_doc = doc,                                                      \
    .tp_methods = methods,                                              \
    .tp_init = (initproc)(init),                                        \
    .tp_new = PyType_GenericNew,                                        \
}

static void program_clear(PyObject *self)
{
    ProgramHead *head = (ProgramHead *)self;
    Py_CLEAR(head->plan);
    Py_CLEAR(head->fallback);
}

/* The module of ``def`` with ``type`` as Program and a new exception ``left`` (its
 * name qualified by the module's) in ``*error``. */
static PyObject *program_module(PyModuleDef *def, PyTypeObject *type, const char *left,
                                PyObject **error)
{
    if (PyType_Ready(type) < 0)
        return NULL;
    PyObject *m = PyModule_Create(def);
    if (m == NULL)
        return NULL;
    PyObject *name = PyUnicode_FromFormat("%s.%s", def->m_name, left);
    if (name != NULL)
        *error = PyErr_NewException(PyUnicode_AsUTF8(name), NULL, NULL);
    Py_XDECREF(name);
    if (*error == NULL || PyModule_AddObjectRef(m, left, *error) < 0
        || PyModule_AddObjectRef(m, "Program", (PyObject *)type) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

#endif
