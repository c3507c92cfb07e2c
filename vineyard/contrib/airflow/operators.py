"""``VineyardXComCleanupOperator``: free a run's store objects when the run is done.

Airflow does not purge XCom objects at the end of a run, so a DAG that passes large values
through the store ends with this task::

    from vineyard.contrib.airflow.operators import VineyardXComCleanupOperator

    with DAG(...):
        raw = extract()
        report = summarize(transform(raw))
        report >> VineyardXComCleanupOperator(task_id="free_xcom_objects")

It runs whatever happened upstream (``trigger_rule="all_done"``) and deletes every object
labelled with this run's ``dag_id`` and ``run_id``. Rows stay in the database; pulling one
afterwards fails with an error saying the object was deleted by a cleanup.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator

from vineyard.contrib.airflow.cleanup import delete_run_objects
from vineyard.contrib.airflow.options import load_options

__all__ = ["VineyardXComCleanupOperator"]


class VineyardXComCleanupOperator(BaseOperator):
    """Delete the store objects the XComs of this DAG run point at.

    Parameters
    ----------
    task_ids
        Only the objects of these tasks (default: every task of the run).
    ipc_socket
        The daemon's socket (default: ``[vineyard] ipc_socket`` or ``VINEYARD_IPC_SOCKET``).
    trigger_rule
        ``"all_done"`` by default, so the objects go even when a task failed.
    """

    template_fields = ("task_ids",)

    def __init__(
        self,
        *,
        task_ids: list[str] | None = None,
        ipc_socket: str | None = None,
        trigger_rule: str = "all_done",
        **kwargs: Any,
    ) -> None:
        super().__init__(trigger_rule=trigger_rule, **kwargs)
        self.task_ids = task_ids
        self.ipc_socket = ipc_socket

    def execute(self, context: Any) -> int:
        """Delete the objects; returns how many were deleted.

        Raises
        ------
        vineyard.StoreUnavailable
            The store cannot be reached.
        """
        import vineyard

        ti = context["ti"]
        socket = self.ipc_socket or load_options().ipc_socket
        if not socket:
            raise vineyard.ConnectionFailedException(
                "no vineyard socket configured: set [vineyard] ipc_socket or VINEYARD_IPC_SOCKET"
            )
        with vineyard.connect(socket) as client:
            deleted = []
            for task_id in self.task_ids or [None]:
                deleted += delete_run_objects(client, ti.dag_id, ti.run_id, task_id=task_id)
        self.log.info("deleted %d store object(s) of run %s: %s", len(deleted), ti.run_id, deleted)
        return len(deleted)
