//! Celery over AMQP against a real RabbitMQ and the real Python Celery.
