// aedes (npm), a broker nobody here wrote, for the squall check matrix:
//   NODE_PATH=<dir>/node_modules node aedes_broker.js PORT
// Listens on 127.0.0.1:PORT with aedes' defaults (MQTT 3.1.1; in-memory persistence) and
// prints "listening" once it does. Runs until killed.
const port = parseInt(process.argv[2], 10);
const aedes = require('aedes')();
const server = require('net').createServer(aedes.handle);
server.listen(port, '127.0.0.1', () => console.log('listening'));
