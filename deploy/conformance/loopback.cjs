// Preloaded (`node --require`) into the http-cache-tests origin server, which listens on every
// interface (`server.listen(port)`): makes a listen on a port alone listen on 127.0.0.1.
const net = require('node:net')

const listen = net.Server.prototype.listen
net.Server.prototype.listen = function (...args) {
  if (/^\d+$/.test(String(args[0])) && typeof args[1] !== 'string') {
    args.splice(1, 0, '127.0.0.1')
  }
  return listen.apply(this, args)
}
