"""Accuracy metrics from predicted and true labels: top-1, macro-F1, per-class accuracy, confusion, agreement."""
from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts C[i, j] of samples with true class i predicted as j."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def macro_f1(cm: np.ndarray) -> float:
    """Unweighted mean over classes of F1 = 2·TP / (2·TP + FP + FN); a class absent from both counts as 0."""
    tp = np.diag(cm).astype(float)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1.mean())


def classification_metrics(y_true, y_pred, num_classes: int) -> dict:
    """Top-1 accuracy, macro-F1, per-class accuracy (recall) and the confusion matrix."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    cm = confusion_matrix(y_true, y_pred, num_classes)
    support = cm.sum(1)
    per_class = np.divide(np.diag(cm), support, out=np.full(num_classes, np.nan), where=support > 0)
    return {
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else float("nan"),
        "macro_f1": macro_f1(cm),
        "per_class_accuracy": [None if np.isnan(v) else float(v) for v in per_class],
        "confusion": cm.tolist(),
    }


def agreement(pred_a, pred_b) -> float:
    """Fraction of samples on which two models predict the same class (top-1)."""
    pred_a, pred_b = np.asarray(pred_a), np.asarray(pred_b)
    return float((pred_a == pred_b).mean())


def disagreement_examples(texts: list[str], y, teacher_pred, student_pred, class_names, *, k: int = 8,
                          max_chars: int = 200) -> dict:
    """Up to ``k`` test samples where the teacher and the student predict different classes (in test order, the
    student's mistakes first), with the true label and both predictions by class name; and how many there are."""
    y, tp, sp = (np.asarray(a) for a in (y, teacher_pred, student_pred))
    differ = np.flatnonzero(tp != sp)
    ranked = sorted(differ, key=lambda i: (sp[i] == y[i], i))[:k]
    name = (lambda c: str(class_names[c])) if len(class_names) else str
    rows = [{"index": int(i), "text": texts[i] if len(texts[i]) <= max_chars else texts[i][:max_chars - 1] + "…",
             "label": name(int(y[i])), "teacher": name(int(tp[i])), "student": name(int(sp[i]))} for i in ranked]
    return {"disagreements": int(len(differ)), "of": int(len(y)), "rows": rows}
