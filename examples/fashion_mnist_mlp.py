import kcompile
from kcompile.models import Sequential
from kcompile.layers import Dense, Flatten, Dropout, Activation
from kcompile.optimizers import Adam
from kcompile.datasets import fashion_mnist
from kcompile.utils import to_categorical, set_random_seed

set_random_seed(0)
(x_train, y_train), (x_test, y_test) = fashion_mnist.load_data()
x_train, x_test = x_train / 255.0, x_test / 255.0
y_train, y_test = to_categorical(y_train, 10), to_categorical(y_test, 10)

model = Sequential()
model.add(Flatten(input_shape=(28, 28)))
model.add(Dense(512, activation='relu'))
model.add(Dropout(0.2))
model.add(Dense(512, activation='relu'))
model.add(Dropout(0.2))
model.add(Dense(10))
model.add(Activation('softmax'))
model.compile(optimizer=Adam(learning_rate=0.001), loss='categorical_crossentropy',
              metrics=['accuracy'], target='llvm')
model.summary()
history = model.fit(x_train, y_train, epochs=2, batch_size=32, validation_split=0.1)
test_loss, test_acc = model.evaluate(x_test, y_test)
probs = model.predict(x_test[:5])
print('Test accuracy:', test_acc)
