// aedes (npm), a broker nobody here wrote, for the squall check matrix and MQTT over WebSocket:
//   NODE_PATH=<dir>/node_modules node aedes_broker.js PORT [ws]
// Listens on 127.0.0.1:PORT with aedes' defaults (MQTT 3.1.1; in-memory persistence), over TCP,
// or with `ws` over WebSocket (websocket-stream, any path), and prints "listening" once it
// does. Runs until killed.
const port = parseInt(process.argv[2], 10);
const aedes = require('aedes')();
let server;
if (process.argv[3] === 'ws') {
  server = require('http').createServer();
  require('websocket-stream').createServer({ server }, aedes.handle);
} else {
  server = require('net').createServer(aedes.handle);
}
server.listen(port, '127.0.0.1', () => console.log('listening'));
