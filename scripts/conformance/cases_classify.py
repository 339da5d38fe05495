"""Cases for coremltools' iOS15/classify.py. A program converted with a `ClassifierConfig` ends
with `classify` over its probabilities: outputs the predicted label (the class of the largest
probability, the first on ties) and the probabilities keyed by class. The reference: numpy
argmax over the stored probabilities; the probabilities in class order."""

from __future__ import annotations

import numpy as np
from coremltools.converters.mil import Builder as mb

from caselib import Case, f64, uniform

FAM = "classify"


def cases() -> list[Case]:
    out: list[Case] = []
    x = uniform(f"{FAM}/x", (1, 5), -2, 2)
    p = np.exp(f64(x) - f64(x).max())
    p /= p.sum()
    classes = [3, 7, 11, 20, 42]
    out.append(Case(FAM, "classify", "classify_int64_labels", {"x": x}, lambda x: mb.softmax(x=x),
                    {"classLabel": np.array(classes[int(np.argmax(p))], np.int64), "classLabel_probs": p.reshape(-1)},
                    classifier=classes,
                    note="int64 labels; probabilities as a vector in class order (Core ML: a dictionary)"))
    return out
