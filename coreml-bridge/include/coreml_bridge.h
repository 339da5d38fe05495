/*
 * coreml_bridge.h — THE contract between the Swift package `coreml-bridge`
 * (static library libCoreMLBridge.a) and its callers (the Rust crate's
 * `core_ml_bridge` module mirrors this file by hand: keep both in step and
 * bump COREML_BRIDGE_ABI_VERSION on any incompatible change).
 *
 * General rules (apply to every function below)
 * ---------------------------------------------
 * - Strings are NUL-terminated UTF-8. Paths are filesystem paths, not URLs.
 * - Every function except the free functions and coreml_bridge_abi_version
 *   returns an int32_t status from CoremlStatus. COREML_OK (0) is success.
 * - OUT parameters: on success the function stores into every out pointer it
 *   documents; on failure it stores NULL into them (when the out pointer
 *   itself is non-NULL) and, when `out_err` is non-NULL, stores an owned
 *   error message there. `out_err` may be NULL (the message is then dropped);
 *   every other out pointer is required (NULL -> COREML_ERR_INVALID_ARGUMENT).
 *   The bridge never reads the previous value of an out pointer.
 * - Ownership: every `char*` the bridge hands out is owned by the caller and
 *   must be released with coreml_free_string (not free()). A CoremlOutputs*
 *   must be released with coreml_free_outputs. A model handle with
 *   coreml_free_model, a model state with coreml_free_state. Each exactly
 *   once.
 * - Error messages: "<what failed>: <reason>", followed, when the failure
 *   came from an NSError, by its domain, code, description and the chain of
 *   NSUnderlyingErrorKey errors, e.g.
 *     "load failed: [com.apple.CoreML code=0] Error in declaring ... ;
 *      caused by: [NSCocoaErrorDomain code=260] The file ... doesn't exist."
 * - No function throws, aborts or unwinds across this boundary; invalid
 *   arguments (NULL pointers, bad enums, inconsistent tensor descriptors,
 *   stale handles) give COREML_ERR_INVALID_ARGUMENT/COREML_ERR_INVALID_HANDLE.
 * - Every entry point runs inside its own autorelease pool (Apple platforms).
 * - Timeouts (`timeout_ms`): must be > 0 (else COREML_ERR_INVALID_ARGUMENT);
 *   values above 30 days are clamped to 30 days. The work runs on a bridge-
 *   owned queue while the calling thread waits with that deadline. Nothing
 *   can abort Core ML work that is already running: on COREML_ERR_TIMEOUT the
 *   caller simply stops waiting; the late work only ever touches bridge-owned
 *   memory and its result is discarded (a late compile deletes its output).
 * - Stuck work is capped: each call whose caller timed out but which has not
 *   returned holds a thread. While COREML_BRIDGE_MAX_STUCK of them (default
 *   8, read once, 1..1024) are still running, every compile, load, predict
 *   and compute-plan call returns COREML_ERR_UNAVAILABLE at once without
 *   starting anything; calls are admitted again as the stuck ones return.
 * - Thread safety: all functions may be called from any thread. Calls on one
 *   model handle are serialised by that handle's own serial queue.
 *
 * Runtimes
 * --------
 * On Apple platforms the bridge uses Core ML. Where Core ML does not exist
 * (Linux) every model function returns COREML_ERR_UNAVAILABLE with the
 * message "Core ML is not available on this platform (Linux)", unless the
 * environment variable COREML_BRIDGE_TEST_RUNTIME=1 is set when the call is
 * made: then a deterministic fake runtime serves the calls (see
 * coreml-bridge/README.md, "Runtimes"). The variable is honoured on every
 * platform.
 */
#ifndef COREML_BRIDGE_H
#define COREML_BRIDGE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Incremented on every incompatible change of this header. */
#define COREML_BRIDGE_ABI_VERSION 2

/* ---- Status codes (int32_t) -------------------------------------------- */
typedef enum CoremlStatus {
    COREML_OK                    = 0,
    COREML_ERR_INVALID_ARGUMENT  = 1,  /* NULL pointer, bad enum, bad tensor descriptor, bad timeout, bad path */
    COREML_ERR_COMPILE           = 2,  /* the model could not be compiled (.mlpackage -> .mlmodelc) */
    COREML_ERR_LOAD              = 3,  /* the compiled model could not be loaded */
    COREML_ERR_SCHEMA_MISMATCH   = 4,  /* inputs do not match the model: unknown/missing name, shape outside constraints, feature type */
    COREML_ERR_PREDICT           = 5,  /* Core ML failed during prediction */
    COREML_ERR_TIMEOUT           = 6,  /* the deadline passed; for predict the handle is now poisoned */
    COREML_ERR_POISONED          = 7,  /* the handle timed out earlier; free it and load the model again */
    COREML_ERR_UNAVAILABLE       = 8,  /* Core ML (or the feature, e.g. MLComputePlan) does not exist on this OS */
    COREML_ERR_OUT_OF_MEMORY     = 9,  /* an allocation failed or a size overflowed */
    COREML_ERR_INTERNAL          = 10, /* a bug in the bridge or an unexpected Core ML answer */
    COREML_ERR_INVALID_HANDLE    = 11, /* NULL, unknown, already freed or garbage model handle */
    COREML_ERR_UNSUPPORTED       = 12, /* valid request this OS's Core ML cannot do (e.g. int8 arrays before macOS 26) */
    COREML_ERR_STATE_IN_USE      = 13, /* (v2) the model state is being used by another call right now */
    COREML_ERR_STATE_MISMATCH    = 14  /* (v2) the model state belongs to another model handle */
} CoremlStatus;

/* ---- Element types (int32_t) ------------------------------------------- */
typedef enum CoremlDType {
    COREML_DTYPE_F32 = 1,  /* IEEE 754 binary32, 4 bytes  (MLMultiArrayDataType.float32) */
    COREML_DTYPE_F16 = 2,  /* IEEE 754 binary16, 2 bytes  (.float16, macOS 12+) */
    COREML_DTYPE_F64 = 3,  /* IEEE 754 binary64, 8 bytes  (.float64/.double) */
    COREML_DTYPE_I32 = 4,  /* int32, 4 bytes              (.int32) */
    COREML_DTYPE_I8  = 5,  /* int8, 1 byte                (.int8, macOS 26+ only) */
    COREML_DTYPE_I64 = 6   /* int64, 8 bytes: outputs only, for Int64 scalar features (shape [1]) */
} CoremlDType;

/* ---- Compute units (int32_t), MLModelConfiguration.computeUnits -------- */
typedef enum CoremlComputeUnits {
    COREML_COMPUTE_ALL         = 0,  /* .all */
    COREML_COMPUTE_CPU_ONLY    = 1,  /* .cpuOnly */
    COREML_COMPUTE_CPU_AND_GPU = 2,  /* .cpuAndGPU */
    COREML_COMPUTE_CPU_AND_NE  = 3   /* .cpuAndNeuralEngine (macOS 13+) */
} CoremlComputeUnits;

/* Maximum tensor rank accepted by the bridge. */
#define COREML_MAX_RANK 16

/*
 * An input tensor, described by the caller. The bridge only reads it, and
 * only during the coreml_predict call: every byte is copied into bridge-owned
 * storage before the prediction is queued, so the caller may reuse or free
 * all of it as soon as coreml_predict returns (whatever the status).
 *
 *   name      feature name (must be an input of the model)
 *   dtype     CoremlDType (not COREML_DTYPE_I64)
 *   rank      1..COREML_MAX_RANK
 *   shape     `rank` dimensions, each >= 1
 *   strides   `rank` strides in ELEMENTS (not bytes), each >= 0; NULL means
 *             row-major contiguous. Used to gather the elements; the bridge
 *             always hands Core ML a row-major copy.
 *   data      first element
 *   byte_len  bytes readable at `data`. Row-major (strides == NULL): must be
 *             exactly product(shape) * sizeof(dtype). Strided: must be at
 *             least (1 + sum((shape[i]-1) * strides[i])) * sizeof(dtype).
 */
typedef struct CoremlTensor {
    const char*    name;
    int32_t        dtype;
    int32_t        rank;
    const int64_t* shape;
    const int64_t* strides;
    const void*    data;
    uint64_t       byte_len;
} CoremlTensor;

/*
 * One output tensor. All pointers point into bridge-owned memory that stays
 * valid until coreml_free_outputs is called on the enclosing CoremlOutputs.
 *
 *   name      feature name
 *   dtype     CoremlDType of the data as Core ML produced it (e.g. an fp16
 *             model gives COREML_DTYPE_F16; conversion is the caller's job)
 *   rank      number of dimensions (>= 1)
 *   shape     `rank` dimensions
 *   data      ROW-MAJOR CONTIGUOUS elements: the bridge has already copied
 *             Core ML's (possibly padded) array through its strides
 *   byte_len  product(shape) * sizeof(dtype)
 */
typedef struct CoremlOutputTensor {
    const char*    name;
    int32_t        dtype;
    int32_t        rank;
    const int64_t* shape;
    const void*    data;
    uint64_t       byte_len;
} CoremlOutputTensor;

/*
 * The result of a successful coreml_predict, owned by the caller and released
 * with coreml_free_outputs. `tensors` has `count` entries, sorted by name.
 * Only multi-array, Double (-> F64 [1]) and Int64 (-> I64 [1]) output
 * features are returned; other feature types (string, dictionary, image,
 * sequence) are omitted: coreml_model_schema lists them with dtype null
 * (v2: coreml_predict_features returns strings and dictionaries too).
 * Never write through these pointers.
 */
typedef struct CoremlOutputs {
    int32_t                   count;
    const CoremlOutputTensor* tensors;
    void*                     reserved;  /* bridge-private bookkeeping */
} CoremlOutputs;

/*
 * (v2) One member of a batch for coreml_predict_batch: its own input
 * descriptors (same rules as coreml_predict's `inputs`).
 */
typedef struct CoremlBatchMember {
    const CoremlTensor* inputs;
    int32_t             n_inputs;
} CoremlBatchMember;

/* ---- Feature values (ABI v2) -------------------------------------------- */
typedef enum CoremlFeatureKind {
    COREML_FEATURE_TENSOR     = 1,  /* MLFeatureValue(multiArray:) */
    COREML_FEATURE_INT64      = 2,  /* MLFeatureValue(int64:) */
    COREML_FEATURE_DOUBLE     = 3,  /* MLFeatureValue(double:) */
    COREML_FEATURE_STRING     = 4,  /* MLFeatureValue(string:) */
    COREML_FEATURE_DICTIONARY = 5   /* outputs only: dictionaryValue (a classifier's probabilities) */
} CoremlFeatureKind;

/*
 * An input feature of coreml_predict_features, read only during the call
 * (every byte and string is copied first). `kind` selects the field read:
 *   TENSOR  `tensor` (as for coreml_predict; tensor.name is ignored, `name`
 *           names the feature)
 *   INT64   `int64_value`      DOUBLE  `double_value`
 *   STRING  `string_value`, NUL-terminated UTF-8, at most 16 MiB
 * Images go through coreml_predict_images (below), not through this struct.
 */
typedef struct CoremlFeature {
    const char*  name;
    int32_t      kind;
    CoremlTensor tensor;
    int64_t      int64_value;
    double       double_value;
    const char*  string_value;
} CoremlFeature;

/*
 * An output feature, pointing into bridge-owned memory valid until
 * coreml_free_feature_outputs. `kind` says which fields hold it:
 *   TENSOR      `tensor` (row-major, as in CoremlOutputs)
 *   INT64       `int64_value`     DOUBLE  `double_value`
 *   STRING      `string_value`
 *   DICTIONARY  `dict_count` entries: keys in `dict_string_keys` (when
 *               dict_key_kind is COREML_FEATURE_STRING) or
 *               `dict_int64_keys` (COREML_FEATURE_INT64), values in
 *               `dict_values`; sorted by key
 * Fields of other kinds are zero / NULL.
 */
typedef struct CoremlOutputFeature {
    const char*         name;
    int32_t             kind;
    CoremlOutputTensor  tensor;
    int64_t             int64_value;
    double              double_value;
    const char*         string_value;
    int32_t             dict_count;
    int32_t             dict_key_kind;
    const char* const*  dict_string_keys;
    const int64_t*      dict_int64_keys;
    const double*       dict_values;
} CoremlOutputFeature;

/* The outputs of coreml_predict_features, sorted by name; released with
 * coreml_free_feature_outputs. */
typedef struct CoremlFeatureOutputs {
    int32_t                    count;
    const CoremlOutputFeature* features;
    void*                      reserved;  /* bridge-private bookkeeping */
} CoremlFeatureOutputs;

/* ---- Images (ABI v2, coreml_predict_images) ------------------------------
 * Pixel formats of CoremlImage.pixel_format. Core ML takes an ImageType input
 * as a CVPixelBuffer of kCVPixelFormatType_32BGRA or _32ARGB (color models),
 * _OneComponent8 (grayscale) or _OneComponent16Half (grayscale float16).
 * RGB8 and BGR8 are not CoreVideo formats Core ML takes, so the bridge
 * converts them to 32BGRA (alpha 255) while it copies: the copy happens
 * anyway (the buffer must be bridge-owned), and converting in that one pass
 * costs no second pass over the pixels and no second buffer. */
typedef enum CoremlPixelFormat {
    COREML_PIXEL_RGB8     = 1,  /* 3 bytes: R, G, B       -> 32BGRA */
    COREML_PIXEL_BGR8     = 2,  /* 3 bytes: B, G, R       -> 32BGRA */
    COREML_PIXEL_BGRA8    = 3,  /* 4 bytes: B, G, R, A    kCVPixelFormatType_32BGRA */
    COREML_PIXEL_ARGB8    = 4,  /* 4 bytes: A, R, G, B    kCVPixelFormatType_32ARGB */
    COREML_PIXEL_GRAY8    = 5,  /* 1 byte                 kCVPixelFormatType_OneComponent8 */
    COREML_PIXEL_GRAY_F16 = 6   /* 2 bytes, IEEE half     kCVPixelFormatType_OneComponent16Half */
} CoremlPixelFormat;

/*
 * An image input of coreml_predict_images, read only during the call.
 *   name           feature name (an "image" input of the model)
 *   pixel_format   CoremlPixelFormat
 *   width, height  pixels, each >= 1; must be a size the feature accepts
 *                  (its default, or its MLImageSizeConstraint)
 *   bytes_per_row  bytes from one row to the next, >= width * bytes per
 *                  pixel (padding allowed; never smaller than a row)
 *   data           first byte of the first row
 *   byte_len       bytes readable at `data`: at least
 *                  (height - 1) * bytes_per_row + width * bytes per pixel
 * Every size is checked with overflow-checked arithmetic before anything is
 * allocated or copied; the pixels are copied (and converted) into a
 * bridge-owned CVPixelBuffer under the call's deadline.
 */
typedef struct CoremlImage {
    const char* name;
    int32_t     pixel_format;
    int32_t     width;
    int32_t     height;
    int64_t     bytes_per_row;
    const void* data;
    uint64_t    byte_len;
} CoremlImage;

/* Most members one coreml_predict_batch call may have. */
#define COREML_MAX_BATCH 4096

/* ---- Functions ---------------------------------------------------------- */

/* The ABI version the library was built with (== COREML_BRIDGE_ABI_VERSION
 * of its header). Callers should refuse to run on a mismatch. */
int32_t coreml_bridge_abi_version(void);

/*
 * Compile a model package (.mlpackage directory, or .mlmodel file) into a
 * compiled model directory `<dest_dir>/<package stem>.mlmodelc`.
 *   package_path       existing .mlpackage/.mlmodel
 *   dest_dir           existing directory; the result must not exist yet
 *                      (COREML_ERR_INVALID_ARGUMENT otherwise, nothing is
 *                      overwritten). The caller's cache does the atomic
 *                      install from there.
 *   timeout_ms         see the general rules; a compile that finishes after
 *                      the deadline deletes its output and never writes into
 *                      dest_dir.
 *   out_compiled_path  OUT, owned: absolute path of the .mlmodelc directory
 *   out_err            OUT, owned, optional
 * Errors: INVALID_ARGUMENT, COMPILE, TIMEOUT, UNAVAILABLE, INTERNAL.
 */
int32_t coreml_compile_model(const char* package_path, const char* dest_dir,
                             int64_t timeout_ms, char** out_compiled_path,
                             char** out_err);

/*
 * Load a compiled model (.mlmodelc directory).
 *   compiled_path  existing .mlmodelc directory
 *   compute_units  CoremlComputeUnits
 *   timeout_ms     see the general rules (first loads can take long: ANE
 *                  specialisation). A load that finishes late is discarded.
 *   out_handle     OUT: opaque model handle, released with coreml_free_model.
 *                  It is an identifier, not a pointer: never dereference it.
 * Errors: INVALID_ARGUMENT, LOAD, TIMEOUT, UNAVAILABLE, INTERNAL.
 */
int32_t coreml_load_model(const char* compiled_path, int32_t compute_units,
                          int64_t timeout_ms, void** out_handle,
                          char** out_err);

/*
 * (v2) Load one function of a multifunction model (coremltools'
 * MultiFunctionDescriptor: several functions sharing weights).
 *   function_name  NULL: the model's default function (then exactly
 *                  coreml_load_model); otherwise a non-empty name. Core ML:
 *                  MLModelConfiguration.functionName (macOS 15 / iOS 18);
 *                  a name on an older OS gives COREML_ERR_UNSUPPORTED, an
 *                  unknown name COREML_ERR_LOAD (Core ML's error).
 * The other parameters, the handle and the errors are coreml_load_model's.
 * The schema of the handle names the function ("function") and lists the
 * package's functions ("functions"). States made with a handle belong to
 * that handle, so to its function.
 */
int32_t coreml_load_model_function(const char* compiled_path,
                                   const char* function_name,
                                   int32_t compute_units, int64_t timeout_ms,
                                   void** out_handle, char** out_err);

/*
 * The model's interface and metadata as JSON (owned string):
 * {
 *   "inputs":  [FEATURE...],   sorted by name
 *   "outputs": [FEATURE...],   sorted by name
 *   "states":  [FEATURE...],   (v2) sorted by name; feature_type "state",
 *                              dtype and "shape" = the state buffer's
 *                              (MLStateConstraint); [] for stateless models
 *   "functions": [s...],       (v2) a multifunction model's functions, sorted
 *                              (MLModelAsset.functionNames, macOS 15); []
 *                              for one function or when it cannot be known
 *   "function":  s|null,       (v2) the function this handle was loaded with
 *                              (null: the default)
 *   "classifier": null | {     (v2) MLModelDescription.predictedFeatureName,
 *       "label_output": s,          .predictedProbabilitiesName and
 *       "probabilities_output": s|null, .classLabels (macOS 14+; [] before)
 *       "labels": [s...] | [int...] }
 *   "metadata": {"author": s, "description": s, "version": s,
 *                "license": s, "user_defined": {s: s, ...}}
 * }
 * FEATURE = {
 *   "name": s,
 *   "feature_type": "multiArray"|"double"|"int64"|"string"|"image"|
 *                   "dictionary"|"sequence"|"state"|"invalid"|"unknown",
 *   "optional": bool,
 *   "dtype": "f32"|"f16"|"f64"|"i32"|"i8"|"i64"|null,  (null: not an array)
 *   "dtype_code": CoremlDType or null,
 *   "shape": [int...],          default shape; [] when not an array
 *   "shape_constraint": {
 *       "type": "none"|"unspecified"|"enumerated"|"range",
 *       "enumerated_shapes": [[int...]...],   (type "enumerated")
 *       "ranges": [{"lower": int, "upper": int|null}...]  one per dimension,
 *                 (type "range"; upper null = unbounded)
 *   },
 *   "image": null | {           (v2) feature_type "image": MLImageConstraint
 *       "width": int, "height": int,        pixelsWide, pixelsHigh (default size)
 *       "pixel_format": int,                pixelFormatType (a CoreVideo OSType)
 *       "color_layout": "color"|"rgb"|"bgr"|"grayscale"|"grayscale_f16",
 *                 from pixelFormatType: Core ML says only "color" (32BGRA /
 *                 32ARGB) for RGB and BGR models; the test runtime may say which
 *       "size_constraint": {                sizeConstraint (MLImageSizeConstraint)
 *           "type": "unspecified"|"enumerated"|"range",
 *           "enumerated_sizes": [{"width": int, "height": int}...],
 *           "width_range": {"lower": int, "upper": int|null},   (type "range")
 *           "height_range": {"lower": int, "upper": int|null} } }
 * }
 * Errors: INVALID_ARGUMENT, INVALID_HANDLE, INTERNAL. Works on poisoned
 * handles (it does not touch the model's queue).
 */
int32_t coreml_model_schema(void* handle, char** out_json, char** out_err);

/*
 * Run one prediction.
 *   handle       from coreml_load_model
 *   inputs       `n_inputs` descriptors (see CoremlTensor); names unique
 *   n_inputs     >= 1
 *   timeout_ms   deadline for queueing + running, see the general rules.
 *                On COREML_ERR_TIMEOUT the handle becomes POISONED: every
 *                later predict on it returns COREML_ERR_POISONED at once.
 *   out_outputs  OUT, owned: release with coreml_free_outputs
 * Order of work: the deadline starts first; then every descriptor is
 * checked (INVALID_ARGUMENT), then checked against the model's schema before
 * a byte is copied: unknown or missing required names, shapes outside the
 * model's constraints, or an element type the feature does not take (f32,
 * f16, f64 and i32 convert into each other, i8 only from i8) give
 * COREML_ERR_SCHEMA_MISMATCH. Then the total row-major size of the copies is
 * capped at COREML_BRIDGE_MAX_INPUT_BYTES (environment, read once, 1 MiB ..
 * 1 TiB, default 2 GiB; COREML_ERR_OUT_OF_MEMORY past it: zero strides let a
 * few bytes describe terabytes). The copy itself checks the deadline every
 * 2^20 elements: a copy that outlasts it gives COREML_ERR_TIMEOUT without
 * poisoning the handle (nothing ran on the model). The prediction gets what
 * is left of the deadline.
 * Errors: INVALID_ARGUMENT, INVALID_HANDLE, SCHEMA_MISMATCH, PREDICT,
 * TIMEOUT, POISONED, UNAVAILABLE (stuck-work cap), UNSUPPORTED,
 * OUT_OF_MEMORY, INTERNAL.
 */
int32_t coreml_predict(void* handle, const CoremlTensor* inputs,
                       int32_t n_inputs, int64_t timeout_ms,
                       CoremlOutputs** out_outputs, char** out_err);

/*
 * (v2) A batch of predictions under ONE deadline (Core ML:
 * MLModel.predictions(from: MLArrayBatchProvider, options:), which may run
 * the members together).
 *   batch        `n_batch` members, 1..COREML_MAX_BATCH
 *   timeout_ms   one deadline for checking and copying every member's
 *                inputs and running the whole batch. On COREML_ERR_TIMEOUT
 *                during the run the handle becomes POISONED, as for
 *                coreml_predict.
 *   out_outputs  OUT: a caller-owned array of `n_batch` slots. On success
 *                slot i holds member i's outputs (release each with
 *                coreml_free_outputs); on failure every slot is NULL.
 * Every member is validated against the model (descriptors, schema, and the
 * byte cap over the whole batch) before any input is copied and before
 * anything runs: a bad member gives its status with "batch member #i" in
 * the message, and nothing ran.
 * Errors: those of coreml_predict.
 */
int32_t coreml_predict_batch(void* handle, const CoremlBatchMember* batch,
                             int32_t n_batch, int64_t timeout_ms,
                             CoremlOutputs** out_outputs, char** out_err);

/*
 * (v2) One prediction with feature values of any kind: multi-arrays,
 * int64, double and string inputs; outputs of every kind Core ML returns
 * except images and sequences (a classifier's label string and its
 * probability dictionary included). Core ML: MLDictionaryFeatureProvider of
 * MLFeatureValue(multiArray:|int64:|double:|string:), prediction(from:).
 * Validation as coreml_predict, plus each value's kind against the
 * feature's type (SCHEMA_MISMATCH naming both), before any copy; the
 * deadline, byte cap and poisoning are coreml_predict's.
 *   out_outputs  OUT, owned: release with coreml_free_feature_outputs
 * Errors: those of coreml_predict.
 */
int32_t coreml_predict_features(void* handle, const CoremlFeature* inputs,
                                int32_t n_inputs, int64_t timeout_ms,
                                CoremlFeatureOutputs** out_outputs,
                                char** out_err);

/*
 * (v2) coreml_predict_features with image inputs too. A sibling entry point
 * rather than a new CoremlFeature kind: CoremlFeature's layout (and so the
 * stride of every caller's array of it) stays what v2 callers compiled
 * against, and an image needs fields no other kind has.
 *   inputs, n_inputs   as coreml_predict_features, except that n_inputs may
 *                      be 0 (then `inputs` may be NULL)
 *   images, n_images   `n_images` CoremlImage descriptors, 0..4096 (NULL
 *                      when 0); n_inputs + n_images >= 1; every name unique
 *                      across both lists
 * Core ML: each image becomes a CVPixelBuffer made by the bridge
 * (CVPixelBufferCreate with the feature's pixel format, then the caller's
 * rows copied through both row strides), fed as MLFeatureValue(pixelBuffer:)
 * in the MLDictionaryFeatureProvider. Before any copy, each image is checked
 * against the model: an image input of that name (SCHEMA_MISMATCH), a pixel
 * format the feature takes (color: RGB8, BGR8, BGRA8, ARGB8; grayscale:
 * GRAY8; grayscale float16: GRAY_F16 -> SCHEMA_MISMATCH naming both), a size
 * the feature accepts (SCHEMA_MISMATCH naming the sizes it takes); bad
 * descriptors (NULL data, a dimension < 1, bytes_per_row smaller than a
 * row, byte_len shorter than the rows) give INVALID_ARGUMENT naming what
 * was expected and what came. The byte cap, deadline, poisoning and outputs
 * are coreml_predict_features'.
 * Errors: those of coreml_predict_features.
 */
int32_t coreml_predict_images(void* handle, const CoremlFeature* inputs,
                              int32_t n_inputs, const CoremlImage* images,
                              int32_t n_images, int64_t timeout_ms,
                              CoremlFeatureOutputs** out_outputs,
                              char** out_err);

/* Release feature outputs. NULL, unknown and already-released pointers are
 * ignored. */
void coreml_free_feature_outputs(CoremlFeatureOutputs* outputs);

/* ---- Model state (ABI v2) ------------------------------------------------
 * A stateful model (Core ML: a model with state features, macOS 15 / iOS 18,
 * e.g. a decoder's KV cache) keeps its state in an MLState the caller holds
 * across predictions. Here that is an opaque state handle: an identifier,
 * never a pointer, from a table separate from model handles (a model handle
 * passed as a state, or the reverse, is COREML_ERR_INVALID_HANDLE).
 *
 * - A state belongs to the model handle that made it. Passing it with
 *   another handle gives COREML_ERR_STATE_MISMATCH (even for a handle on the
 *   same model file: Core ML's states are per MLModel instance).
 * - A state serves one call at a time. A call that finds it in use by
 *   another thread's call returns COREML_ERR_STATE_IN_USE at once (it does
 *   not wait, and changes nothing).
 * - A prediction with a state that times out poisons BOTH the model handle
 *   and the state (the late prediction may still update it): later calls
 *   with either return COREML_ERR_POISONED. Free both; load and make anew.
 * - Freeing the model handle does not free its states (and the reverse);
 *   a state of a freed handle can only be freed.
 * - Where MLState does not exist (before macOS 15 / iOS 18):
 *   COREML_ERR_UNSUPPORTED. For a model without states Core ML makes an
 *   empty state, and predictions with it behave as coreml_predict.
 */

/*
 * Make a fresh state for a model (Core ML: MLModel.makeState(); every state
 * buffer zeroed). Runs on the handle's queue under the deadline; a state
 * made after the deadline is dropped. A timeout here does not poison the
 * handle (no prediction ran), but later calls queue behind the late work.
 *   out_state  OUT: opaque state handle, released with coreml_free_state.
 * Errors: INVALID_ARGUMENT, INVALID_HANDLE, POISONED, TIMEOUT, UNSUPPORTED,
 * UNAVAILABLE (stuck-work cap), PREDICT (Core ML failed), INTERNAL.
 */
int32_t coreml_make_state(void* handle, int64_t timeout_ms, void** out_state,
                          char** out_err);

/*
 * One prediction that reads and updates `state` (Core ML:
 * MLModel.prediction(from:using:options:)). Inputs, outputs, validation,
 * the byte cap and the deadline are exactly those of coreml_predict; the
 * handle and the state are checked first (INVALID_HANDLE, STATE_MISMATCH,
 * POISONED, STATE_IN_USE), before any input is read.
 * Errors: those of coreml_predict, plus STATE_MISMATCH and STATE_IN_USE.
 */
int32_t coreml_predict_with_state(void* handle, void* state,
                                  const CoremlTensor* inputs, int32_t n_inputs,
                                  int64_t timeout_ms,
                                  CoremlOutputs** out_outputs, char** out_err);

/* Release a state. NULL, unknown and already-freed states are ignored. Safe
 * while a (timed-out) prediction still uses it: that work keeps the MLState
 * alive until it returns. */
void coreml_free_state(void* state);

/*
 * Where each operation of a compiled model would run, from MLComputePlan
 * (macOS 14.4+). JSON (owned):
 * {
 *   "model_type": "program"|"neuralNetwork"|"pipeline"|"unsupported",
 *   "operations": [{"function": s, "index": int, "operator": s,
 *                   "outputs": [s...],
 *                   "preferred_device": "cpu"|"gpu"|"neural_engine"|null,
 *                   "supported_devices": [s...],
 *                   "estimated_cost": number|null}...],
 *   "device_counts": {"cpu": int, "gpu": int, "neural_engine": int, "unknown": int}
 * }
 * (For neural networks, "operations" holds layers: "operator" is the layer
 * type, "function" is "" and "estimated_cost" is null.)
 * Where MLComputePlan does not exist: COREML_ERR_UNAVAILABLE with a message
 * saying so. Errors: INVALID_ARGUMENT, LOAD, TIMEOUT, UNAVAILABLE, INTERNAL.
 */
int32_t coreml_compute_plan(const char* compiled_path, int32_t compute_units,
                            int64_t timeout_ms, char** out_json,
                            char** out_err);

/*
 * What this process runs on, as JSON (owned); never fails for lack of Core
 * ML: on Linux it returns COREML_OK with "coreml_available": false.
 * {
 *   "bridge_abi_version": int,
 *   "platform": "macOS"|"iOS"|"Linux"|...,
 *   "os_version": s,          ProcessInfo.operatingSystemVersionString
 *   "os_build": s|null,       e.g. "23E214" (kern.osversion)
 *   "chip": s|null,           e.g. "Apple M2" (machdep.cpu.brand_string; /proc/cpuinfo on Linux)
 *   "coreml_available": bool,
 *   "coreml_version": s|null, CoreML.framework's CFBundleShortVersionString
 *   "neural_engine_present": bool|null,  null when it cannot be known
 *   "neural_engine_cores": int|null,
 *   "compute_plan_available": bool,      MLComputePlan (macOS 14.4+)
 *   "test_runtime": bool,                COREML_BRIDGE_TEST_RUNTIME=1 in effect
 *   "reason": s|null          why Core ML is unavailable
 * }
 * Errors: INVALID_ARGUMENT (out_json NULL), INTERNAL.
 */
int32_t coreml_runtime_info(char** out_json, char** out_err);

/* ---- Caller-owned output buffers (ABI v2, additive) ---------------------- */
/*
 * One output the caller wants written into its own memory by
 * coreml_predict_into.
 *
 *   name      output feature name (a multi-array output of the model)
 *   dtype     CoremlDType the model produces for it (no conversion is done)
 *   rank      1..COREML_MAX_RANK
 *   shape     `rank` dimensions, each >= 1: must equal the output's shape
 *   strides   `rank` strides in ELEMENTS, each >= 0; NULL means row-major
 *   data      first element (written, never read)
 *   byte_len  bytes writable at `data`: at least
 *             (1 + sum((shape[i]-1) * strides[i])) * sizeof(dtype)
 */
typedef struct CoremlOutputBuffer {
    const char*    name;
    int32_t        dtype;
    int32_t        rank;
    const int64_t* shape;
    const int64_t* strides;
    void*          data;
    uint64_t       byte_len;
} CoremlOutputBuffer;

/*
 * One prediction whose outputs are written into the caller's buffers.
 * Inputs as for coreml_predict. Each of the `n_outputs` buffers (1..4096,
 * distinct names, a subset of the model's multi-array outputs) receives its
 * output with exactly one copy (stride-aware), made on the CALLER'S thread
 * after the prediction finished and before this function returns: a call
 * that times out returns at once and its late prediction writes only into
 * bridge-owned staging buffers, never into caller memory (which the caller
 * may free as soon as this function returns, whatever the status).
 *
 * Staging buffers (each input's copy, each output's backing) come from a
 * pool of the model handle, keyed by byte size: after the first call with
 * given shapes, further calls allocate no tensor-sized buffer in the
 * bridge. On Core ML the output staging buffers are offered as
 * MLPredictionOptions.outputBackings; an output Core ML did not write there
 * (its own array instead) is copied from Core ML's array (still one copy).
 *
 * A buffer whose dtype or shape differs from what the model produced fails
 * with COREML_ERR_SCHEMA_MISMATCH and a message beginning "output buffer";
 * nothing has been written into any caller buffer then. On any error the
 * caller buffers' contents are unspecified (a copy may have stopped at the
 * deadline). A timeout poisons the handle, as for coreml_predict.
 * Errors: those of coreml_predict.
 */
int32_t coreml_predict_into(void* handle, const CoremlTensor* inputs,
                            int32_t n_inputs, const CoremlOutputBuffer* outputs,
                            int32_t n_outputs, int64_t timeout_ms,
                            char** out_err);

/*
 * The handle's buffer counters, as JSON (owned; for tests and debugging).
 * Counted over coreml_predict_into calls since the handle was loaded:
 * {
 *   "calls": int,                   coreml_predict_into calls that ran a prediction
 *   "buffer_allocations": int,      staging buffers the pool allocated
 *   "buffer_bytes_allocated": int,
 *   "pooled_buffers": int,          staging buffers idle in the pool now
 *   "input_copies": int,            input copies into staging buffers
 *   "output_copies": int,           copies into caller buffers
 *   "bytes_copied": int,            by both kinds of copy
 *   "outputs_in_backing": int,      outputs the runtime wrote into the staging backing
 *   "outputs_runtime_owned": int    outputs the runtime produced in its own array
 *                                   (an allocation the bridge cannot avoid)
 * }
 * Errors: INVALID_ARGUMENT, INVALID_HANDLE.
 */
int32_t coreml_debug_counters(void* handle, char** out_json, char** out_err);

/* Release a model handle. NULL, unknown and already-freed handles are
 * ignored. Safe while a prediction on the handle is still running (also a
 * timed-out one): the running work keeps what it needs alive and the model
 * is released when it finishes. */
void coreml_free_model(void* handle);

/* Release a string returned by the bridge. NULL is ignored. */
void coreml_free_string(char* s);

/* Release predict outputs. NULL, and pointers the bridge did not hand out
 * or already released, are ignored. */
void coreml_free_outputs(CoremlOutputs* outputs);

#ifdef __cplusplus
}
#endif

#endif /* COREML_BRIDGE_H */
