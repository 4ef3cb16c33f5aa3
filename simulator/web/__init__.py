"""HTTP, in one place: the server shell (``server``), the daemon's pages and /metrics
(``pages``), the control API (``api``) and its token (``auth``), the Alertmanager webhook
receiver (``webhook``) and the control API's client (``client``)."""
