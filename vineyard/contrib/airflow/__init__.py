"""Apache Airflow 3 integration: an XCom backend that keeps large values in the store.

* :mod:`vineyard.contrib.airflow.xcom` — ``VineyardXCom``
  (``AIRFLOW__CORE__XCOM_BACKEND=vineyard.contrib.airflow.xcom.VineyardXCom``);
* :mod:`vineyard.contrib.airflow.operators` — ``VineyardXComCleanupOperator``, the last task
  of a DAG that frees its run's objects;
* :mod:`vineyard.contrib.airflow.cli` — ``airflow vineyard gc`` / ``cleanup``;
* :mod:`vineyard.contrib.airflow.provider` — the provider entry point (``[vineyard]`` options);
* :mod:`vineyard.contrib.airflow.refs`, ``store``, ``cleanup``, ``options``, ``errors`` — the
  reference format, the per-process client, the cleanup functions, configuration, errors.

Nothing is imported here: Airflow loads this package in every process through the provider
entry point, and the core of vineyard never imports Airflow. See ``docs/airflow.md``.
"""

from __future__ import annotations

__all__: list[str] = []
