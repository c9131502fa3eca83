// queue_redis_stream: Haraka's queue step for deploy/bench/haraka, the work
// intake does at the end of a mail: one XADD of the message into a Redis
// stream, then 250. Each entry holds the transaction id, the clamd plugin's
// verdict ("clamd: clean" only when clamd answered "stream: OK" for this
// message, else "clamd: none") and the whole message as received.
//
// Config (queue_redis_stream.ini in Haraka's config dir):
//   [main]  stream = the stream key
//           ready = a set each serving process adds its pid to once its
//                   plugins' Redis connections are up (optional): Haraka
//                   listens before they are, and the limit plugin trips over
//                   a connection that comes in between
//   [redis] host, port, db  (haraka-plugin-redis keys; defaults redis.ini)
// A Redis error answers 451 (DENYSOFT): the client keeps the mail.

exports.register = function () {
  this.inherits('haraka-plugin-redis')
  this.cfg = this.config.get('queue_redis_stream.ini')
  if (!this.cfg.main || !this.cfg.main.stream) {
    throw new Error('queue_redis_stream.ini: [main] stream is not set')
  }
  this.merge_redis_ini()
  // init_master runs with nodes unset (one process), init_child in each
  // worker of cluster mode: one Redis connection per process.
  this.register_hook('init_master', 'init_redis_plugin')
  this.register_hook('init_child', 'init_redis_plugin')
  // Last in config/plugins, so every plugin before has run its init.
  this.register_hook('init_master', 'mark_ready')
  this.register_hook('init_child', 'mark_ready')
  this.register_hook('queue', 'store')
}

exports.mark_ready = async function (next, server) {
  const cluster = server && server.cluster
  // In cluster mode the master only hands connections to the workers.
  if (!this.cfg.main.ready || (cluster && (cluster.isPrimary ?? cluster.isMaster))) {
    return next()
  }
  try {
    await this.db.sAdd(this.cfg.main.ready, String(process.pid))
  } catch (err) {
    this.logerror(`SADD ${this.cfg.main.ready}: ${err.message}`)
  }
  next()
}

exports.store = function (next, connection) {
  const txn = connection.transaction
  if (!this.db) return next(DENYSOFT, 'storage not connected')
  const clamd = txn.results.get('clamd')
  const verdict = clamd && clamd.pass && clamd.pass.includes('clean') ? 'clean' : 'none'
  txn.message_stream.get_data((message) => {
    this.db
      .xAdd(this.cfg.main.stream, '*', {
        id: txn.uuid,
        scan: `clamd: ${verdict}`,
        message,
      })
      .then(() => next(OK, `stored as ${txn.uuid}`))
      .catch((err) => {
        connection.logerror(this, `XADD ${this.cfg.main.stream}: ${err.message}`)
        next(DENYSOFT, 'storage unavailable, try again later')
      })
  })
}
