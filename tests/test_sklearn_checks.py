"""scikit-learn's estimator checks on small, fast configurations."""

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from numgru.estimators import GRUClassifier, GRURegressor

SAMPLE_WEIGHT_REASON = (
    "minibatch training: a sample with weight 0 still changes which samples "
    "share a minibatch and how many minibatches an epoch has, so it is not "
    "equivalent to removing the sample (equivalence holds with full batches, "
    "see test_estimators.py::test_sample_weight_equivalences_with_full_batches)")


def expected_failed_checks(estimator):
    return {
        "check_sample_weight_equivalence_on_dense_data": SAMPLE_WEIGHT_REASON,
    }


ESTIMATORS = [
    GRURegressor(hidden_size=8, max_iter=40, learning_rate_init=0.05,
                 batch_size=32, random_state=0, n_jobs=1),
    GRUClassifier(hidden_size=8, max_iter=20, learning_rate_init=0.05,
                  batch_size=32, random_state=0, n_jobs=1),
]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@parametrize_with_checks(ESTIMATORS,
                         expected_failed_checks=expected_failed_checks)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
